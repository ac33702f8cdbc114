"""`tokencli serve`'s options as a person meets them: help that names what each takes,
choices that complete, and usage errors (exit 2) for what cannot work."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tokencli.cli.app import app


def test_help_names_what_each_option_takes(runner: CliRunner) -> None:
    result = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "<str>" not in result.stdout and "<int range>" not in result.stdout
    for shown in ("--host ADDRESS", "--port PORT", "text|json|off", "--max-connections N"):
        assert shown in result.stdout, shown
    assert "--workers" not in result.stdout  # gone: it measured slower on both stores


def test_access_log_completes_its_choices(runner: CliRunner) -> None:
    result = runner.invoke(
        app,
        [],
        prog_name="tokencli",
        env={
            "_TOKENCLI_COMPLETE": "complete_lines",
            "_TOKENCLI_COMPLETE_LINE": "tokencli serve --access-log ",
        },
    )
    assert result.exit_code == 0
    assert result.stdout.split() == ["text", "json", "off"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--access-log", "xml"], "'xml' is not one of"),
        (["--workers", "2"], "No such option: --workers"),
        (["--tls-cert", "cert.pem"], "give --tls-cert and --tls-key together"),
        (["--port", "70000"], "70000 is not in the range"),
    ],
)
def test_options_that_cannot_work_are_usage_errors(
    runner: CliRunner, arguments: list[str], message: str
) -> None:
    result = runner.invoke(app, ["serve", *arguments])
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
