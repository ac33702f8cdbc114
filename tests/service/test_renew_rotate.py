"""renew and rotate: a live token gets a new expiry, or a successor."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tokencli.cli.app import app
from tokencli.domain.errors import ExitStatus, NotFoundError
from tokencli.domain.model import EVERY_TOKEN, TokenState
from tokencli.service.service import TokenService

from support import START, Clock

pytestmark = pytest.mark.stores("sqlite", "postgres")


def test_renew_extends_a_live_token(service: TokenService, clock: Clock) -> None:
    issued = service.issue(ttl_seconds=60)
    clock.advance(50)
    info = service.renew(issued.info.id, 3600)
    assert info.expires_at == START + 50 + 3600
    clock.advance(3000)
    assert service.check(issued.token).valid


@pytest.mark.parametrize("condition", ["expired", "revoked", "used_up", "unknown"])
def test_renew_refuses_tokens_that_are_not_live(
    service: TokenService, clock: Clock, condition: str
) -> None:
    issued = service.issue(ttl_seconds=60, uses=1)
    token_id = issued.info.id
    if condition == "expired":
        clock.advance(60)
    elif condition == "revoked":
        service.revoke(token_id)
    elif condition == "used_up":
        service.check(issued.token)
    else:
        token_id = "aaaaaaaaaaaa"
    with pytest.raises(NotFoundError):
        service.renew(token_id, 600)
    assert service.audit()[-1].outcome.startswith("refused")


def test_rotate_keeps_label_and_limit_and_honours_grace(
    service: TokenService, clock: Clock
) -> None:
    old = service.issue(ttl_seconds=3600, label="deploy", uses=5)
    service.check(old.token)
    new = service.rotate(old.info.id, grace_seconds=600)
    assert new.info.label == "deploy"
    assert new.info.uses_left == 5  # the limit it was issued with, not what was left
    assert new.info.expires_at - new.info.created_at == 3600
    clock.advance(599)
    assert service.check(old.token).valid  # inside the grace period
    assert service.check(new.token).valid
    clock.advance(1)
    assert service.check(old.token).state is TokenState.EXPIRED
    assert service.check(new.token).valid
    assert [e.action for e in service.audit(token_id=old.info.id)][:3] == [
        "issue",
        "check",
        "rotate",
    ]


def test_rotate_without_grace_ends_the_old_token_now(service: TokenService) -> None:
    old = service.issue()
    new = service.rotate(old.token, ttl_seconds=120)
    assert service.check(old.token).state is TokenState.EXPIRED
    assert new.info.expires_at - new.info.created_at == 120


def test_rotate_refuses_dead_or_unknown(service: TokenService) -> None:
    old = service.issue()
    service.revoke(old.info.id)
    with pytest.raises(NotFoundError, match="revoked"):
        service.rotate(old.info.id)
    with pytest.raises(NotFoundError, match="no token"):
        service.rotate("aaaaaaaaaaaa")
    assert len(list(service.list_tokens(EVERY_TOKEN))) == 1


def test_renew_and_rotate_commands(runner: CliRunner) -> None:
    token = runner.invoke(app, ["issue", "--label", "x"]).stdout.strip()
    token_id = token.split(":")[0]
    renewed = runner.invoke(app, ["renew", token_id, "--ttl", "2h", "--json"])
    assert renewed.exit_code == 0
    assert json.loads(renewed.stdout)["id"] == token_id
    rotated = runner.invoke(app, ["rotate", token_id, "--grace", "10m"])
    assert rotated.exit_code == 0
    new_token = rotated.stdout.strip()
    assert new_token != token and new_token.count(":") == 1
    assert runner.invoke(app, ["check", "-q", token]).exit_code == 0  # grace
    assert runner.invoke(app, ["check", "-q", new_token]).exit_code == 0
    missing = runner.invoke(app, ["renew", "aaaaaaaaaaaa", "--ttl", "1h"])
    assert missing.exit_code == ExitStatus.NOT_VALID and "no token" in missing.stderr
    assert runner.invoke(app, ["rotate", "aaaaaaaaaaaa"]).exit_code == ExitStatus.NOT_VALID
    assert runner.invoke(app, ["renew", token_id, "--ttl", "0"]).exit_code == ExitStatus.USAGE
    assert runner.invoke(app, ["rotate", token_id, "--grace", "-1m"]).exit_code == 2


def test_refusals_name_the_action_in_plain_words(service: TokenService) -> None:
    old = service.issue()
    service.revoke(old.info.id)
    with pytest.raises(NotFoundError) as renewing:
        service.renew(old.info.id, 600)
    assert str(renewing.value).endswith("only a live token can be renewed")
    with pytest.raises(NotFoundError) as rotating:
        service.rotate(old.info.id)
    assert str(rotating.value).endswith("only a live token can be rotated")
