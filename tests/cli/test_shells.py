"""Completion in the real bash, zsh and fish, installed exactly as the README says: TAB
offers the live token IDs (labels as descriptions) and runs nothing a label holds.

A label is text any client allowed to issue chose (`POST /app/token` on the default
loopback server). Each hostile label below would create its marker file if any layer
(the script, the shell's completion system, a glob, an `eval`) ran it as code; typer's
zsh script did, for the first one (issue 18, item 1).
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest
from terminal import Terminal

from tokencli.service.service import TokenService

from support import EXECUTABLE, component, needs_executable

pytestmark = [pytest.mark.interop, needs_executable]

README = Path(__file__).resolve().parents[2] / "README.md"

# {m} is the marker file each would create if it ran.
HOSTILE_LABELS = [
    'x\\" <(touch {m}) \\"',  # the reported one: typer did not escape the backslash
    "$(touch {m})",
    "`touch {m}`",
    "; touch {m};",
    "'; touch {m}; '",
    '"; touch {m}; "',
    "*(e:'touch {m}':)",  # a zsh glob qualifier that runs code while globbing
    "(e:'touch {m}')",
    "\\$(touch {m}) \\\\",
    "<(touch {m}) >(touch {m})",
    "${{(e)$(touch {m})}}",  # zsh's (e) flag: evaluate as it expands
    "%F{{red}}%(e.x.y) $(touch {m}) 100%",
    "[$(touch {m})] {{a,b}} ~root",
]
# Stored by another tool (an import, SQL): characters `issue` would refuse.
RAW_LABELS = ["two\nlines $(touch {m})", "tab\there `touch {m}`", "\x1b]0;$(touch {m})\x07"]
SHOWN_AS_IS = "100% %F{red}x%f"  # a harmless label whose description must show literally


def readme_install_lines(shell: str) -> list[str]:
    """The command lines the README's "Shell completion" block gives for `shell`."""
    section = README.read_text().split("## Shell completion", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    lines: dict[str, list[str]] = {}
    current = ""
    for line in block.splitlines():
        header = re.match(r"# (bash|zsh|fish)\b", line)
        if header is not None:
            current = header.group(1)
        elif line.strip() and not line.startswith("#"):
            lines.setdefault(current, []).append(line)
    assert lines.get(shell), f"README gives no install lines for {shell}"
    return lines[shell]


@pytest.fixture
def home(tmp_path: Path, db_path: Path) -> dict[str, str]:
    """The environment of a fresh user whose PATH finds the installed tokencli."""
    folder = tmp_path / "home"
    folder.mkdir()
    assert EXECUTABLE is not None
    return {
        "HOME": str(folder),
        "PATH": f"{Path(EXECUTABLE).parent}:/usr/bin:/bin",
        "TOKENCLI_DB": str(db_path),
        "TERM": "dumb",
        "LANG": "C.UTF-8",
        "XDG_CONFIG_HOME": str(folder / ".config"),
        "XDG_DATA_HOME": str(folder / ".local" / "share"),
    }


@pytest.fixture
def hostile(on_file: TokenService, db_path: Path, tmp_path: Path) -> tuple[list[str], Path]:
    """Live tokens labelled with every hostile label; their IDs and the markers' folder."""
    markers = tmp_path / "markers"
    markers.mkdir()
    ids = []
    for number, label in enumerate(HOSTILE_LABELS):
        ids.append(on_file.issue(label=label.format(m=markers / f"m{number}")).info.id)
    ids.append(on_file.issue(label=SHOWN_AS_IS).info.id)
    raw_ids = [on_file.issue(label="raw").info.id for _ in RAW_LABELS]
    connection = sqlite3.connect(db_path)
    try:
        for number, (label, token_id) in enumerate(zip(RAW_LABELS, raw_ids, strict=True)):
            connection.execute(
                "UPDATE tokens SET label = ? WHERE id = ?",
                (label.format(m=markers / f"r{number}"), token_id),
            )
        connection.commit()
    finally:
        connection.close()
    ids.extend(raw_ids)
    return sorted(ids), markers


def install(shell: str, env: dict[str, str]) -> None:
    """Run the README's install lines for `shell`, in that shell."""
    program = component(shell, package=shell)
    flags = {"bash": ["--norc", "--noprofile", "-c"], "zsh": ["-f", "-c"], "fish": ["-c"]}
    for line in readme_install_lines(shell):
        done = subprocess.run(
            [program, *flags[shell], line], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, (line, done.stderr)


def ready(terminal: Terminal) -> None:
    """Wait until the interactive shell has read its startup files and runs commands."""
    terminal.send(b"echo READY$((6*7))\n")
    terminal.expect(b"READY42")


def test_bash_offers_the_ids_and_runs_no_label(
    home: dict[str, str], hostile: tuple[list[str], Path], on_file: TokenService
) -> None:
    ids, markers = hostile
    on_file.issue(scopes=["read:logs", "deploy"])
    install("bash", home)
    bash = component("bash", package="bash")
    with Terminal([bash, "-i"], {**home, "INPUTRC": "/dev/null"}) as terminal:
        ready(terminal)
        start = len(terminal.output)
        terminal.send(b"tokencli revoke \t\t")  # the second TAB lists the candidates
        for token_id in ids:
            terminal.expect(token_id.encode(), start)
        # bash splits words at ':'; the script completes the scope whole all the same.
        terminal.send(b"\x15tokencli list --scope read:l\t")
        terminal.expect(b"--scope read:logs ", start)
        terminal.send(b"\x15exit\n")
        terminal.finish()
    assert "out of date" not in terminal.output.decode(errors="replace")
    assert list(markers.iterdir()) == []


def test_zsh_offers_the_ids_with_labels_and_runs_no_label(
    home: dict[str, str], hostile: tuple[list[str], Path]
) -> None:
    ids, markers = hostile
    install("zsh", home)
    zsh = component("zsh", package="zsh")
    with Terminal([zsh, "-i"], home) as terminal:
        ready(terminal)
        start = len(terminal.output)
        terminal.send(b"tokencli revoke \t")  # zsh lists the candidates at the first TAB
        for token_id in ids:
            terminal.expect(token_id.encode(), start)
        # Descriptions are shown as they are: no prompt escapes, no expansion.
        terminal.expect(f"-- {SHOWN_AS_IS}".encode(), start)
        terminal.send(b"\x15exit\n")
        terminal.finish()
    assert "out of date" not in terminal.output.decode(errors="replace")
    assert list(markers.iterdir()) == []


def test_fish_offers_the_ids_with_labels_and_runs_no_label(
    home: dict[str, str], hostile: tuple[list[str], Path]
) -> None:
    ids, markers = hostile
    install("fish", home)
    fish = component("fish", package="fish")
    offered = subprocess.run(
        [fish, "-c", "complete -C'tokencli revoke '"],
        env=home,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert offered.returncode == 0, offered.stderr
    lines = offered.stdout.splitlines()
    assert sorted(line.split("\t")[0] for line in lines) == ids
    assert any(line.endswith(f"\t{SHOWN_AS_IS}") for line in lines)
    assert all(line.count("\t") == 1 for line in lines)  # one line, one description each
    assert list(markers.iterdir()) == []


def test_fish_offers_files_where_tokencli_has_no_candidates(home: dict[str, str]) -> None:
    install("fish", home)
    Path(home["HOME"], "key.pem").write_text("")
    fish = component("fish", package="fish")
    offered = subprocess.run(
        [fish, "-c", "cd ~; complete -C'tokencli serve --tls-cert k'"],
        env=home,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert offered.stdout.splitlines() == ["key.pem"], offered.stderr


def test_the_install_lines_leave_the_scripts_tokencli_prints(home: dict[str, str]) -> None:
    assert EXECUTABLE is not None
    for shell, installed in (
        ("bash", ".tokencli-completion.bash"),
        ("zsh", ".zfunc/_tokencli"),
        ("fish", ".config/fish/completions/tokencli.fish"),
    ):
        install(shell, home)
        printed = subprocess.run(
            [EXECUTABLE, "completion", shell], capture_output=True, text=True, timeout=60
        ).stdout
        assert Path(home["HOME"], installed).read_text() == printed, shell
    assert os.environ.get("HOME") != home["HOME"]  # the real home was never touched
