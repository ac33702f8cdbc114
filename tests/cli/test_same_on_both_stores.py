"""One session of commands, run on SQLite and on PostgreSQL: the transcripts match.

The rest of the suite runs each behaviour test on both stores against the same expected
values; this test compares the two stores' outputs with each other directly, so what no
test pins (a key's place, a message's words, an event's detail) must match too.

Tokens, IDs, times and secret hashes differ from run to run; they are replaced by names
before comparing. `stats` differs by design only in `database` and `size_bytes`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from typer.testing import CliRunner

from tokencli.cli.app import app

from pg_cluster import PgCluster

# Each step: the command line; {name} is the token issued with --label name (or named
# by `rotate NAME`), {name.id} its ID. How to compare the output: "text" as it is,
# "lines" sorted, "array" a JSON array sorted by ID.
SESSION: list[tuple[str, str]] = [
    ("issue --json --label a --uses 3 --scope x --scope y", "text"),
    ("issue --label b", "text"),
    ("issue --json --label c --ttl 2h", "text"),
    ("issue --label d --uses 1", "text"),
    ("issue --label f --count 3 --scope x", "text"),
    ("check --json {a}", "text"),
    ("check {b}", "text"),
    ("check --json --scope z {a}", "text"),
    ("check --json --scope x --scope y {a}", "text"),
    ("check --json garbage", "text"),
    ("check {d}", "text"),
    ("check --json {d}", "text"),
    ("check --json {a}x", "text"),
    ("list --scope x --jsonl", "lines"),
    ("show --json {a.id} {b}", "text"),
    ("show zzzzzzzzzzzz {c.id}", "text"),
    ("revoke {b.id} zzzzzzzzzzzz", "text"),
    ("check --json {b}", "text"),
    ("revoke {b}", "text"),
    ("renew {c.id} --ttl 3h --json", "text"),
    ("renew {b.id} --ttl 1h", "text"),
    ("renew {d.id} --ttl 1h", "text"),
    ("rotate {c} --grace 10m --json", "text"),
    ("rotate {b.id}", "text"),
    ("list --all --json", "array"),
    ("list --state revoked --state used_up --jsonl", "lines"),
    ("list --label a --scope x --json", "array"),
    ("list --scope nope --json", "array"),
    ("revoke --label a --dry-run", "text"),
    ("revoke --scope nope", "text"),
    ("purge --dry-run --json", "text"),
    ("stats --json", "stats"),
    ("audit --json", "text"),
    ("audit --token {a.id} --limit 2 --json", "text"),
    ("export --audit", "lines"),
    ("purge --json --audit-retention none", "text"),
    ("list --all --json", "array"),
]
TOKEN = re.compile(r"\b([a-z2-7]{12})(:[A-Za-z0-9_-]{30})?")
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
HASH = re.compile(r"sha256:[0-9a-f]{64}")


class Session:
    """Runs SESSION on one database and keeps a transcript in names, not values."""

    def __init__(self, runner: CliRunner, db: str) -> None:
        self.runner = runner
        self.db = db
        self.tokens: dict[str, str] = {}  # name -> token

    def names(self, text: str) -> str:
        by_token = {token: name for name, token in self.tokens.items()}
        by_id = {token.split(":")[0]: name for name, token in self.tokens.items()}

        def named(match: re.Match[str]) -> str:
            whole = match.group(0)
            if whole in by_token:
                return f"<{by_token[whole]}>"
            if match.group(1) in by_id and match.group(2) is None:
                return f"<{by_id[match.group(1)]}.id>"
            return whole

        return HASH.sub("<hash>", ISO_TIME.sub("<time>", TOKEN.sub(named, text)))

    def run(self, step: str, compare: str) -> tuple[str, int, Any, str]:
        words = [self.expand(word) for word in step.split()]
        result = self.runner.invoke(app, ["--db", self.db, *words])
        self.learn(step, result.stdout)
        out = self.names(result.stdout)
        shown: Any = out
        if compare == "lines":
            shown = sorted(out.splitlines())
        elif compare == "array":
            shown = sorted(json.loads(out), key=lambda item: item["id"])
        elif compare == "stats":
            body = json.loads(out)
            shown = (
                list(body),
                {k: v for k, v in body.items() if k not in ("database", "size_bytes")},
            )
        return step, result.exit_code, shown, self.names(result.stderr)

    def expand(self, word: str) -> str:
        def value(match: re.Match[str]) -> str:
            name, _, part = match.group(1).partition(".")
            token = self.tokens[name]
            return token.split(":")[0] if part == "id" else token

        return re.sub(r"\{([a-z0-9.]+)\}", value, word)

    def learn(self, step: str, stdout: str) -> None:
        words = step.split()
        if words[0] == "issue":
            label = words[words.index("--label") + 1]
            printed = stdout.splitlines()
            if "--json" in words:
                printed = [json.loads(line)["token"] for line in printed]
            if "--count" in words:  # f0, f1, f2... in the order printed
                self.tokens.update({f"{label}{n}": token for n, token in enumerate(printed)})
            else:
                self.tokens[label] = printed[0]
        elif words[0] == "rotate" and stdout.strip():
            name = words[1].strip("{}").split(".")[0] + "2"
            line = stdout.strip()
            self.tokens[name] = json.loads(line)["token"] if "--json" in words else line


@pytest.mark.stores("sqlite", reason="runs the session on both stores itself")
def test_a_session_prints_the_same_on_both_stores(
    runner: CliRunner, db_path: Any, postgres_cluster: PgCluster, postgres_schema: str
) -> None:
    transcripts = []
    for db in (str(db_path), postgres_cluster.url()):
        session = Session(runner, db)
        transcripts.append([session.run(step, compare) for step, compare in SESSION])
    sqlite, postgres = transcripts
    for on_sqlite, on_postgres in zip(sqlite, postgres, strict=True):
        assert on_postgres == on_sqlite
    codes = {step: code for step, code, _, _ in sqlite}
    assert 0 in codes.values() and 1 in codes.values()  # the session meets both outcomes
    assert any("<a.id>" in str(shown) for _, _, shown, _ in sqlite)  # and names its tokens
