"""A throwaway PostgreSQL cluster for the tests, and a fresh schema for each test.

Load it from conftest.py with `pytest_plugins = ["pg_cluster"]`. Fixtures:

- `postgres_cluster` (session): one cluster started from the installed PostgreSQL binaries
  in a temporary folder, reachable only through a Unix socket, stopped and removed at the
  end. Without the binaries the tests that use it skip, except when CI=true, where a
  missing PostgreSQL fails them: CI must install it (.ci/run does).
- `postgres_schema` (function): a schema name unique to the test, put in
  TOKENCLI_PG_SCHEMA; the schema is dropped afterwards.
- `postgres_url` (function): the cluster's URL, for a test whose tokencli schema is
  `postgres_schema`.
- `own_postgres_cluster` (function): a second cluster of the test's own, for a test that
  stops and starts PostgreSQL (`stop_fast`, `start_again`) without disturbing the rest.
- `make_cluster` (function): clusters with settings of the test's own (`PgCluster.standby`
  makes a streaming standby of one with pg_basebackup; `promote`, `crash`); all stopped
  and removed at the end.
- `pgbouncer` (session): a PgBouncer in transaction pooling mode in front of the session's
  cluster, on a Unix socket of its own (`PgBouncer.url`). Missing PgBouncer: the tests
  that use it skip, or fail under CI=true (support.component).

PostgreSQL refuses to run as root, and the suite runs as root (CI too): then initdb and
postgres run as the `postgres` user that Debian's package creates, in a folder given to it.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

SERVICE_USER = "postgres"  # the OS user Debian's package creates, and our superuser role
PASSWORD_ROLE = "tokencli_pw"  # a role that must give a password (the rest is trusted)
PASSWORD = "right-horse-battery-staple"


def find_bindir() -> Path | None:
    """The folder of the PostgreSQL server binaries (initdb, pg_ctl, postgres), or None.

    Debian installs them in /usr/lib/postgresql/NN/bin and puts none on PATH; a machine
    may add symlinks (then their real folder is used). .ci/run looks them up the same way.
    """
    on_path = shutil.which("initdb")
    if on_path is not None:
        return Path(os.path.realpath(on_path)).parent
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        return None
    newest = max(found, key=lambda path: [int(part) for part in re.findall(r"\d+", path)])
    return Path(newest).parent


class PgCluster:
    """A running throwaway cluster: its binaries, its folder, and URLs to reach it.

    `settings` are added to postgresql.conf (after ours, so they win); `hba` lines go
    before the trust line; `netns` runs the server inside that network namespace.
    """

    def __init__(
        self,
        bindir: Path,
        *,
        settings: dict[str, str] | None = None,
        hba: list[str] | None = None,
        netns: str | None = None,
    ) -> None:
        self.bindir = bindir
        self.settings = settings or {}
        self.hba = hba or []
        self._netns: list[str] = ["ip", "netns", "exec", netns] if netns else []
        # As root, run the binaries as the service user; otherwise as ourselves.
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            # runuser is in /usr/sbin, which a non-login PATH may lack.
            runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
            if runuser is None:
                raise RuntimeError("running as root needs runuser (util-linux) to start PostgreSQL")
            self._as_user = [runuser, "-u", SERVICE_USER, "--"]
        # In /tmp rather than $TMPDIR: the service user must reach it, and a socket's path
        # must stay under about 100 bytes.
        self.folder = Path(tempfile.mkdtemp(prefix="tokencli-pg-", dir="/tmp"))
        if self._as_user:
            shutil.chown(self.folder, user=SERVICE_USER)
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.started = False

    def url(self, dbname: str = "postgres", user: str = SERVICE_USER, password: str = "") -> str:
        """A URL to this cluster through its socket (libpq reads the folder from `host`)."""
        secret = f":{password}" if password else ""
        return f"postgresql://{user}{secret}@/{dbname}?host={self.folder}"

    def _run(self, *command: str) -> None:
        result = subprocess.run(
            [*self._netns, *self._as_user, *command],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{command[0]} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            )

    def start(self) -> None:
        """initdb, configure for speed and a socket only, start, and add the test roles."""
        initdb = [
            str(self.bindir / "initdb"),
            *("-D", str(self.data), "-U", SERVICE_USER),
            *("--auth=trust", "--encoding=UTF8", "--no-sync", "--no-instructions"),
        ]
        try:
            # An ICU collation sorts punctuation unlike byte order (as most production
            # databases do), so a query that forgets COLLATE "C" gets caught here.
            self._run(*initdb, "--locale=C.UTF-8", "--locale-provider=icu", "--icu-locale=en-US")
        except RuntimeError:  # PostgreSQL before 15, or built without ICU
            shutil.rmtree(self.data, ignore_errors=True)
            self._run(*initdb)
        settings = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.folder}'",
            # A throwaway cluster: durability buys nothing and costs seconds.
            "fsync": "off",
            "full_page_writes": "off",
            "synchronous_commit": "off",
            "max_connections": "100",
            "shared_buffers": "32MB",
            **self.settings,
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        # One role must authenticate, so a test can meet a wrong password; the rest trust
        # (replication too, for a standby made from this cluster).
        (self.data / "pg_hba.conf").write_text(
            f"local all {PASSWORD_ROLE} scram-sha-256\n"
            + "".join(f"{line}\n" for line in self.hba)
            + "local all all trust\nlocal replication all trust\n"
        )
        self.start_again()
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(PASSWORD_ROLE), sql.Literal(PASSWORD)
                )
            )
            # PostgreSQL 15 on lets only the owner create schemas in a database.
            admin.execute(
                sql.SQL("GRANT CREATE ON DATABASE postgres TO {}").format(
                    sql.Identifier(PASSWORD_ROLE)
                )
            )

    def start_again(self) -> None:
        """Start the server on its existing data folder, waiting until it accepts."""
        try:
            self._run(
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "start",
            )
        except RuntimeError as error:
            log = self.log.read_text() if self.log.exists() else "(no server log)"
            raise RuntimeError(f"{error}\nserver log:\n{log}") from None
        self.started = True

    @classmethod
    def standby(cls, primary: PgCluster, name: str, **settings: str) -> PgCluster:
        """A hot standby streaming from `primary` (pg_basebackup -R), started; its
        `application_name` is `name` (for synchronous_standby_names)."""
        standby = cls(primary.bindir)
        source = f"host={primary.folder} user={SERVICE_USER} application_name={name}"
        standby._run(
            str(primary.bindir / "pg_basebackup"),
            # A fast checkpoint: the default spreads it over minutes on a busy primary.
            *("-D", str(standby.data), "-d", source, "-R", "--no-sync", "-X", "stream"),
            "--checkpoint=fast",
        )
        own = {"unix_socket_directories": f"'{standby.folder}'", **settings}
        with (standby.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in own.items())
        standby.start_again()
        return standby

    def promote(self) -> None:
        """Make a standby the primary, waiting until it accepts writes."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "promote")

    def crash(self) -> None:
        """Stop at once, as a crash would (`-m immediate`: no checkpoint, sessions cut)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        self.started = False

    def stop_fast(self) -> None:
        """Stop the server as an operator would (`-m fast`: sessions are disconnected)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        self.started = False

    def pg_dump(self, url: str, schema: str) -> str:
        """The plain-text dump of one schema, as pg_dump writes it (same version as us)."""
        result = subprocess.run(
            [str(self.bindir / "pg_dump"), "--schema", schema, "--dbname", url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pg_dump failed ({result.returncode}):\n{result.stderr}")
        return result.stdout

    def stop(self) -> None:
        """Stop the server at once (nothing in it is worth a clean shutdown) and remove it."""
        try:
            if self.started:
                self._run(
                    str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"
                )
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def drop_schema(self, schema: str) -> None:
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )


def _bindir_or_skip() -> Path:
    """The server binaries' folder; skip without them (fail under CI)."""
    bindir = find_bindir()
    if bindir is None:
        message = "PostgreSQL server binaries (initdb) not found; install Debian's postgresql"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return bindir


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PgCluster]:
    """One PostgreSQL cluster for the whole session (skips without PostgreSQL, unless CI)."""
    cluster = PgCluster(_bindir_or_skip())
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_schema(postgres_cluster: PgCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A schema name for this test alone, in TOKENCLI_PG_SCHEMA; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("TOKENCLI_PG_SCHEMA", name)
    yield name
    postgres_cluster.drop_schema(name)


@pytest.fixture
def postgres_url(postgres_cluster: PgCluster, postgres_schema: str) -> str:
    """The URL of the test cluster; tokencli's tables go to `postgres_schema`."""
    return postgres_cluster.url()


@pytest.fixture
def own_postgres_cluster() -> Iterator[PgCluster]:
    """A cluster for this test alone (about a second to make): stop and start it at will."""
    cluster = PgCluster(_bindir_or_skip())
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., PgCluster]]:
    """Start clusters of the test's own (`PgCluster` keywords; `standby_of=` makes a
    streaming standby of another); every one is stopped and removed at the end."""
    made: list[PgCluster] = []
    bindir = _bindir_or_skip()

    def make(
        *, standby_of: PgCluster | None = None, name: str = "standby1", **kwargs: Any
    ) -> PgCluster:
        if standby_of is not None:
            cluster = PgCluster.standby(standby_of, name, **kwargs)
            made.append(cluster)
            return cluster
        cluster = PgCluster(bindir, **kwargs)
        made.append(cluster)
        cluster.start()
        return cluster

    try:
        yield make
    finally:
        for cluster in reversed(made):
            cluster.stop()


class PgBouncer:
    """PgBouncer in front of a cluster, in transaction pooling mode, on a Unix socket of its
    own: a small pool, so clients share server connections as they do in production."""

    PORT = 6432

    def __init__(self, executable: str, cluster: PgCluster, *, pool_size: int = 2) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="tokencli-pgb-", dir="/tmp"))
        self.log = self.folder / "pgbouncer.log"
        settings = {
            "listen_addr": "",  # no TCP: the socket in `folder` only
            "listen_port": str(self.PORT),
            "unix_socket_dir": str(self.folder),
            "auth_type": "trust",
            "auth_file": str(self.folder / "users.txt"),
            "pool_mode": "transaction",
            "default_pool_size": str(pool_size),
            "max_client_conn": "200",
            "logfile": str(self.log),
            "admin_users": SERVICE_USER,
        }
        (self.folder / "users.txt").write_text(f'"{SERVICE_USER}" ""\n')
        (self.folder / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={cluster.folder} port=5432\n"
            "[pgbouncer]\n" + "".join(f"{key} = {value}\n" for key, value in settings.items())
        )
        as_user: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
            assert runuser is not None
            as_user = [runuser, "-u", SERVICE_USER, "--"]
            shutil.chown(self.folder, user=SERVICE_USER)
            for path in self.folder.iterdir():
                shutil.chown(path, user=SERVICE_USER)
        self.process = subprocess.Popen(
            [*as_user, executable, str(self.folder / "pgbouncer.ini")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        socket = self.folder / f".s.PGSQL.{self.PORT}"
        deadline = time.monotonic() + 30
        while not socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pgbouncer did not start:\n{self.log_text()}")
            time.sleep(0.02)

    def url(self, dbname: str = "postgres", user: str = SERVICE_USER) -> str:
        """A URL to the cluster through PgBouncer."""
        return f"postgresql://{user}@/{dbname}?host={self.folder}&port={self.PORT}"

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else "(no log)"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pgbouncer(postgres_cluster: PgCluster) -> Iterator[PgBouncer]:
    """PgBouncer (transaction pooling) in front of the session's cluster."""
    from support import component

    bouncer = PgBouncer(component("pgbouncer", package="pgbouncer"), postgres_cluster)
    try:
        yield bouncer
    finally:
        bouncer.stop()
