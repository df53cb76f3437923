"""Throwaway PostgreSQL clusters for tests, built from Debian's server binaries.

`running_cluster()` runs `initdb` into a fresh temporary directory, starts the server on a free
127.0.0.1 port (its unix socket inside that directory, never the system one), creates a database
and yields a `PostgresCluster`; on exit it stops the server and deletes the directory.

The session fixtures `postgres_cluster` and `postgres_url` wrap it for the suite; a conftest makes
them available with `from tests.support.postgres import postgres_cluster, postgres_url`.

initdb refuses to run as root, so under root the server runs as Debian's `postgres` system user
(or `nobody`) through `runuser`, and the temporary directory belongs to that user. Missing server
binaries are a test failure that names the fix (`make install`), never a silent skip.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SUPERUSER = "cxr_test"
DATABASE = "cxr_test"
DEBIAN_ROOT = Path("/usr/lib/postgresql")  # Debian's layout: /usr/lib/postgresql/<major>/bin
START_TIMEOUT_S = 60
START_ATTEMPTS = 3  # a free port can be taken between probing it and the server binding it

# Durability is worthless for a cluster deleted after the session; these make it start and run faster.
_SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are missing, or a cluster could not be created or started."""


def find_bindir() -> Path:
    """Folder holding `initdb` and `pg_ctl`: the newest Debian /usr/lib/postgresql/N/bin, else PATH."""
    debian = sorted(DEBIAN_ROOT.glob("*/bin"), key=_major_version, reverse=True)
    on_path = [Path(p).parent for p in [shutil.which("initdb")] if p]
    for bindir in [*debian, *on_path]:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    raise PostgresUnavailable(
        f"PostgreSQL server binaries (initdb, pg_ctl) not found in {DEBIAN_ROOT}/*/bin or on PATH; "
        "run `make install` (scripts/install-system-deps.sh installs Debian's postgresql package)"
    )


def _major_version(bindir: Path) -> int:
    name = bindir.parent.name
    return int(name) if name.isdigit() else -1


def _server_user() -> str | None:
    """None when this process may run the server itself; else the unprivileged account to run it as."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise PostgresUnavailable("running as root, and neither a 'postgres' nor a 'nobody' user exists to run initdb as")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresCluster:
    """A server started by `running_cluster`: trust authentication, reachable on 127.0.0.1 only."""

    bindir: Path
    base_dir: Path
    port: int
    os_user: str | None  # None: runs as the current user

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "socket"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "server.log"

    def url(self, database: str = DATABASE) -> str:
        """SQLAlchemy URL of `database` on this server (psycopg 3 driver)."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def conninfo(self, database: str = DATABASE) -> str:
        """libpq connection string, for psycopg.connect()."""
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={database} connect_timeout=10"

    def create_database(self, name: str) -> str:
        """Create an empty database (e.g. one per test module) and return its SQLAlchemy URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def is_running(self) -> bool:
        """True while a server answers for the data directory (`pg_ctl status` exits 0)."""
        if not self.data_dir.is_dir():
            return False
        return self._run("pg_ctl", "status", "-D", str(self.data_dir), check=False).returncode == 0

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / program), *args]
        if self.os_user is not None:
            if shutil.which("runuser"):
                command = ["runuser", "-u", self.os_user, "--", *command]
            else:
                command = ["su", "-s", "/bin/sh", "-c", shlex.join(command), self.os_user]
        # cwd: the server user may not be allowed into the caller's working directory (e.g. /root).
        result = subprocess.run(
            command,
            cwd=self.base_dir,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=START_TIMEOUT_S + 30,
        )
        if check and result.returncode != 0:
            raise PostgresUnavailable(
                f"{program} {' '.join(args)} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
            )
        return result

    def _make_dir(self, path: Path) -> None:
        path.mkdir(mode=0o700)
        if self.os_user is not None:
            entry = pwd.getpwnam(self.os_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _init(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--no-locale",
            "--encoding=UTF8",
            "--no-sync",
        )
        self._make_dir(self.socket_dir)

    def _start(self) -> None:
        """Start on a free port, retrying with another port if the probed one was taken meanwhile."""
        conf = self.data_dir / "postgresql.conf"
        base_conf = conf.read_text()
        for attempt in range(1, START_ATTEMPTS + 1):
            self.port = _free_port()
            settings = {**_SERVER_SETTINGS, "port": str(self.port), "unix_socket_directories": f"'{self.socket_dir}'"}
            lines = "".join(f"{key} = {value}\n" for key, value in settings.items())
            conf.write_text(f"{base_conf}\n# cxr-review test cluster\n{lines}")
            result = self._run(
                "pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", str(START_TIMEOUT_S),
                check=False,
            )  # fmt: skip
            if result.returncode == 0:
                return
            if attempt == START_ATTEMPTS or "could not bind" not in self.log_tail(50):
                raise PostgresUnavailable(
                    f"PostgreSQL did not start (pg_ctl exit {result.returncode}): {result.stderr.strip()}\n"
                    f"server log:\n{self.log_tail()}"
                )

    def _stop(self) -> None:
        if not self.is_running():
            return
        stopped = self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", check=False)
        if stopped.returncode != 0:
            self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-w")


@contextlib.contextmanager
def running_cluster() -> Iterator[PostgresCluster]:
    """A fresh cluster with database `cxr_test`; stopped and deleted when the block exits."""
    bindir = find_bindir()
    os_user = _server_user()
    # Under /tmp rather than pytest's tmp_path: the unix socket path must stay short (108 bytes),
    # and the server user must be able to reach the directory.
    base_dir = Path(tempfile.mkdtemp(prefix="cxr-pg-", dir="/tmp" if Path("/tmp").is_dir() else None))
    cluster = PostgresCluster(bindir=bindir, base_dir=base_dir, port=0, os_user=os_user)
    try:
        if os_user is not None:
            entry = pwd.getpwnam(os_user)
            os.chown(base_dir, entry.pw_uid, entry.pw_gid)
        cluster._init()
        cluster._start()
        cluster.create_database(DATABASE)
        yield cluster
    finally:
        try:
            cluster._stop()
        finally:
            shutil.rmtree(base_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL server for the whole test session."""
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(running_cluster())
        except PostgresUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        yield cluster


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """SQLAlchemy URL (`postgresql+psycopg://...`) of an empty database on the session's server."""
    return postgres_cluster.url()
