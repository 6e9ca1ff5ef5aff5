"""A throwaway PostgreSQL cluster for the end-to-end tests of the deployment (issue 22):
Debian's `postgresql` server binaries (`initdb`, `pg_ctl`, `postgres`), `initdb` in a temporary
directory, started on a free loopback port (its Unix socket in that directory) as the `postgres`
user when the tests run as root (the server refuses root), SCRAM password; stopped and removed
afterwards. Used by tests/test_postgres_instance.py and tests/test_celery_workers.py.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.browser import require_components

PG_BINARIES = ("initdb", "pg_ctl", "postgres")
INSTALL_HINT = "apt-get update && apt-get install -y postgresql"


# ---------------------------------------------------------------------------------------------
def pg_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres: PATH's (symlinks resolved: pg_ctl finds
    postgres beside itself), else Debian's /usr/lib/postgresql/<version>/bin, newest first."""
    cands = []
    if shutil.which("initdb"):
        cands.append(Path(os.path.realpath(shutil.which("initdb"))).parent)
    cands += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)]
    for d in cands:
        if all(os.access(d / b, os.X_OK) for b in PG_BINARIES):
            return d
    return None


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", path))


def _server_user() -> str | None:
    """Who runs the server: this user, or (as root, which postgres refuses) `postgres` or `nobody`."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and neither a `postgres` nor a `nobody` user exists to run the server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class PgCluster:
    root: Path
    port: int
    user: str
    password: str
    db: str

    def env(self) -> dict[str, str]:
        """The variables schedules/dagster.postgres.yaml.example reads."""
        return {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_DB": self.db,
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
        }

    def connect(self):
        import psycopg2  # lazy: the `postgres` extra

        return psycopg2.connect(
            host="127.0.0.1", port=self.port, user=self.user, password=self.password, dbname=self.db
        )

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with contextlib.closing(self.connect()) as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()


@contextlib.contextmanager
def pg_cluster(bindir: Path, db: str = "dagster"):
    """initdb in a temporary directory, start on a free loopback port (its Unix socket in that
    directory too), create `db`; stop the server and remove the directory afterwards."""
    import psycopg2  # lazy: the `postgres` extra

    run_as = _server_user()
    prefix = ["runuser", "-u", run_as, "--"] if run_as else []
    root = Path(tempfile.mkdtemp(prefix="lens-pg-"))
    data, log, pwfile = root / "data", root / "server.log", root / "pw"
    user, password = "lens", secrets.token_hex(16)
    pwfile.write_text(password + "\n")
    if run_as:
        ent = pwd.getpwnam(run_as)
        os.chown(root, ent.pw_uid, ent.pw_gid)
        os.chown(pwfile, ent.pw_uid, ent.pw_gid)
    port = free_port()

    def pg(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120, check=check)

    started = False
    try:
        pg(
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            user,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
        )
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        started = True
        res = pg(
            str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", opts, "start", check=False
        )
        if res.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {res.stderr.strip()}\n{tail(log)}")
        conn = psycopg2.connect(host="127.0.0.1", port=port, user=user, password=password, dbname="postgres")
        conn.autocommit = True
        with contextlib.closing(conn), conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{db}"')
        yield PgCluster(root=root, port=port, user=user, password=password, db=db)
    finally:
        if started:
            pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)


def tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.is_file() else f"({path} missing)"


def require_postgres() -> Path:
    """The server's bin directory, or skip (outside CI) / fail (in CI) with the reason."""
    problems = []
    bindir = pg_bindir()
    if bindir is None:
        problems.append(
            f"PostgreSQL server binaries ({', '.join(PG_BINARIES)}) not found on PATH or under "
            f"/usr/lib/postgresql/*/bin; install with: {INSTALL_HINT}"
        )
    for mod in ("psycopg2", "dagster_postgres"):
        try:
            __import__(mod)
        except ImportError:
            problems.append(f"the {mod} Python package is not installed (the `postgres` extra: make install)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        problems.append("running as root (the server refuses root) and runuser(1) is missing")
    require_components("PostgreSQL", problems)
    return bindir
