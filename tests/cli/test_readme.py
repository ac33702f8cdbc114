"""The README's shell examples, run as written against the installed tokencli.

Every ```sh block of README.md is run line by line in bash, on a fresh database of its
own, in a scratch folder and home. The example IDs (3kq7d2mxa4bz, 7f2mq4zzk3ab), $TOKEN
and $OLD name live tokens there, as a reader following the README would have; files an
example reads (token.txt, backup.jsonl) exist. Each line must succeed without a word on
stderr, unless listed in EXPECTED with its status and why. Blocks that need the network,
root paths, a PostgreSQL host or a long-running server are not run (nor collected, so no
skip hides in the suite's summary), each by a rule below that says why: their commands
are exercised elsewhere.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from tokencli.domain.model import TokenFilter
from tokencli.service.service import TokenService
from tokencli.service.transfer import export_objects, import_lines
from tokencli.service.views import encode_json, iso_time

from support import EXECUTABLE, component, needs_executable

pytestmark = [pytest.mark.interop, needs_executable]

README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLE_IDS = ("3kq7d2mxa4bz", "7f2mq4zzk3ab")
EVERY_TOKEN = TokenFilter(states=None)

# (pattern in a block, why it is not run here); the first that matches decides.
SKIPPED_BY_DESIGN = [
    (
        r"pip install",
        "installs from a package index and (the test command) runs this whole suite; run by "
        "hand on Debian's python3 + python3-pip, and by .ci/run",
    ),
    (r"postgresql://", "needs a PostgreSQL server on another host"),
    (r"/etc/|/var/", "writes or reads root paths (/etc/tokencli, /var/lib/tokencli)"),
    (
        r"tokencli serve\b",
        "starts a long-running server; tests/server run it with these options on 127.0.0.1",
    ),
    (r"\bcurl\b", "needs a running server; tests/server send these requests"),
]

# (start of a line, its exit status, why it is not 0 when run as written).
EXPECTED = {
    "tokencli import < tokens.jsonl": (
        1,
        "the export it reads came from this very database: its IDs are already stored",
    ),
}


def shell_blocks() -> list[str]:
    """The text of each ```sh block, in order."""
    return re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)


def skip_reason(block: str) -> str | None:
    """Why `block` is not run, or None."""
    return next((why for pattern, why in SKIPPED_BY_DESIGN if re.search(pattern, block)), None)


def commands(block: str) -> list[str]:
    """The block's command lines: comment-only lines dropped, continuations joined."""
    found: list[str] = []
    pending = ""
    for line in block.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line + "\n"
        if not line.rstrip().endswith("\\"):
            found.append(pending.rstrip("\n"))
            pending = ""
    assert not pending, "a continuation line ends the block"
    return found


def block_id(index: int, block: str) -> str:
    words = re.sub(r"[^a-z0-9-]+", " ", block.split("\n", 1)[0].lower()).split()
    return f"{index}-" + "-".join(words[:4])


@pytest.fixture
def reader_setup(tmp_path: Path, on_file: TokenService) -> dict[str, str]:
    """What a reader who followed the README so far has: live tokens under the example
    IDs, $TOKEN and $OLD, token.txt and backup.jsonl. The environment for the examples.
    (Made in this process, through the same service and import code: the examples are
    what runs the installed tokencli.)"""
    assert EXECUTABLE is not None
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    now = int(time.time())
    lines = [
        json.dumps(
            {
                "type": "token",
                "id": token_id,
                "label": "example",
                "created_at": iso_time(now),
                "expires_at": iso_time(now + 86_400),
                "uses_left": None,
                "uses_limit": None,
                "revoked_at": None,
                "scopes": ["deploy"],
                "secret_hash": "sha256:" + f"{number:064x}",
            }
        )
        for number, token_id in enumerate(EXAMPLE_IDS, start=1)
    ]
    import_lines(on_file, lines)
    token = on_file.issue(ttl_seconds=900, label="deploy", scopes=["deploy"]).token
    old = on_file.issue(ttl_seconds=86_400, label="ci").token
    (work / "token.txt").write_text(token + "\n")
    exported = export_objects(on_file, EVERY_TOKEN, audit=True)
    (work / "backup.jsonl").write_text("".join(encode_json(line) + "\n" for line in exported))
    return {
        "HOME": str(home),
        "PATH": f"{Path(EXECUTABLE).parent}:/usr/bin:/bin",
        "TOKENCLI_DB": str(on_file.store.location),
        "LANG": "C.UTF-8",
        "WORK": str(work),
        "TOKEN": token,
        "OLD": old,
    }


RUNNABLE = [index for index, block in enumerate(shell_blocks()) if skip_reason(block) is None]


@pytest.mark.parametrize(
    "index", RUNNABLE, ids=[block_id(index, shell_blocks()[index]) for index in RUNNABLE]
)
def test_the_readme_examples_run_as_written(
    index: int, reader_setup: dict[str, str], tmp_path: Path
) -> None:
    block = shell_blocks()[index]
    lines = commands(block)
    assert lines, block
    # Each line in the same bash session (an assignment carries on), its status and its
    # stderr kept apart.
    results = tmp_path / "results"
    results.mkdir()
    script = ["set -o pipefail", 'cd "$WORK"']
    for number, line in enumerate(lines):
        script.append(f'{{ {line}\n}} 2>"{results}/{number}.err"; echo $? >"{results}/{number}"')
    bash = component("bash", package="bash")
    done = subprocess.run(
        [bash, "--norc", "--noprofile", "-c", "\n".join(script)],
        env=reader_setup,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "Traceback" not in done.stderr
    for number, line in enumerate(lines):
        status = int((results / str(number)).read_text())
        stderr = (results / f"{number}.err").read_text()
        expected = next(
            (code for start, (code, _why) in EXPECTED.items() if line.startswith(start)), 0
        )
        assert "Traceback" not in stderr, line
        assert status == expected, (line, status, stderr)
        if expected == 0:
            assert stderr == "", (line, stderr)


def test_every_expected_failure_and_skip_rule_is_still_used() -> None:
    blocks = shell_blocks()
    every_line = [line for block in blocks for line in commands(block)]
    for start in EXPECTED:
        assert any(line.startswith(start) for line in every_line), start
    for pattern, _why in SKIPPED_BY_DESIGN:
        assert any(re.search(pattern, block) for block in blocks), pattern
    # Most examples run: the skips are the exception.
    assert sum(skip_reason(block) is None for block in blocks) >= 10
