"""Which role each command opens: `TokenReader` for those that only read (it has no
method that writes, and opens a SQLite file read-only), `TokenChecker` for check,
`TokenService` for the rest. A read-only command cannot call a write by mistake."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tokencli.domain.errors import StorageError
from tokencli.domain.location import Location
from tokencli.domain.model import AuditEvent
from tokencli.service.checking import TokenChecker
from tokencli.service.reader import TokenReader
from tokencli.service.service import TokenService

from databases import RawDatabase

CLI = Path(__file__).resolve().parents[2] / "tokencli" / "cli"
WRITES = {"check", "check_many", "issue", "issue_batches", "revoke", "revoke_many", "renew"}
WRITES |= {"rotate", "purge"}
CHECKS = {"check", "check_many"}

# The factories of cli/base.py each command calls: the narrowest role that does the job.
COMMAND_ROLES = {
    "list": {"reader"},
    "show": {"reader"},
    "stats": {"reader"},
    "audit": {"reader"},
    "export": {"reader"},
    "check": {"checker"},
    "purge": {"reader", "service"},  # --dry-run reads
    "revoke": {"reader", "service"},  # --dry-run reads
    "issue": {"service"},
    "renew": {"service"},
    "rotate": {"service"},
    "import": {"service"},
    "completion": set(),
}


def roles_opened() -> dict[str, set[str]]:
    """For each command defined in cli/ (serve aside), the role factories it calls."""
    found: dict[str, set[str]] = {}
    for module in CLI.glob("*.py"):
        if module.name == "serve.py":
            continue
        tree = ast.parse(module.read_text())
        functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
        for function in functions.values():
            names = [
                keyword.value.value
                for decorator in function.decorator_list
                if isinstance(decorator, ast.Call)
                and isinstance(decorator.func, ast.Attribute)
                and decorator.func.attr == "command"
                for keyword in decorator.keywords
                if keyword.arg == "name" and isinstance(keyword.value, ast.Constant)
            ]
            if not any(
                isinstance(decorator, ast.Call)
                and isinstance(decorator.func, ast.Attribute)
                and decorator.func.attr == "command"
                for decorator in function.decorator_list
            ):
                continue
            # The command's own body and the module's helpers it calls (check's _check).
            bodies = [function]
            for call in ast.walk(function):
                if isinstance(call, ast.Call) and isinstance(call.func, ast.Name):
                    if call.func.id in functions:
                        bodies.append(functions[call.func.id])
            calls = {
                call.func.id
                for body in bodies
                for call in ast.walk(body)
                if isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
            }
            found[names[0] if names else function.name] = calls & {"reader", "checker", "service"}
    return found


def test_each_command_opens_the_narrowest_role() -> None:
    assert roles_opened() == COMMAND_ROLES


def test_a_reader_has_no_method_that_writes() -> None:
    assert not [name for name in WRITES if hasattr(TokenReader, name)]
    assert not [name for name in WRITES - CHECKS if hasattr(TokenChecker, name)]
    assert all(hasattr(TokenChecker, name) for name in CHECKS)
    assert all(hasattr(TokenService, name) for name in WRITES)


@pytest.mark.stores("sqlite", reason="SQLite opens a reader's file mode=ro")
def test_a_reader_opens_the_file_read_only(on_file: TokenService, location: Location) -> None:
    on_file.issue()
    with TokenReader.open(location) as reading:
        assert reading.database_exists
        assert len(list(reading.list_tokens())) == 1
        with pytest.raises(StorageError, match="readonly"), reading.store.transaction():
            reading.store.record([AuditEvent(1, "check", None, "malformed", "cli")])
    assert [event.action for event in on_file.audit()] == ["issue"]


@pytest.mark.stores("sqlite", "postgres")
def test_only_the_full_service_creates_a_database(location: Location, raw: RawDatabase) -> None:
    for role in (TokenReader, TokenChecker):
        with role.open(location) as opened:
            assert not opened.database_exists
            assert list(opened.list_tokens()) == []
        assert not raw.exists(), role
    with TokenService.open(location) as service:
        assert service.database_exists
        service.issue()
    assert raw.exists()
