"""A throw-away STAC API for tests: PostgreSQL + PostGIS + pgstac + stac-fastapi-pgstac.

Everything runs on 127.0.0.1 from a scratch directory and is torn down on exit.
System requirements (PostgreSQL 15, PostGIS 3) come from ``scripts/provision.sh``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool
from pypgstac.db import PgstacDB
from pypgstac.load import Loader, Methods
from pypgstac.migrate import Migrate

PG_BINDIR = Path(os.environ.get("STAC_TEST_PG_BINDIR", "/usr/lib/postgresql/15/bin"))
PG_SUPERUSER = "postgres"
PG_DATABASE = "pgstac"
# Keys understood by stac-fastapi-pgstac's ENABLED_EXTENSIONS; "filter" is CQL2.
ENABLED_EXTENSIONS = "query,sort,fields,filter,pagination,collection_search,free_text"
STARTUP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Postgres:
    """Connection parameters of a running test cluster."""

    port: int
    password: str
    host: str = "127.0.0.1"
    user: str = PG_SUPERUSER
    dbname: str = PG_DATABASE

    def dsn(self, dbname: str | None = None) -> str:
        """Return a libpq connection string for ``dbname`` (default: the pgstac DB)."""
        return (
            f"host={self.host} port={self.port} user={self.user} "
            f"password={self.password} dbname={dbname or self.dbname}"
        )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _is_root() -> bool:
    return os.geteuid() == 0


def _pg_cmd(binary: str, *args: str) -> list[str]:
    """Command line for a PostgreSQL binary, as the ``postgres`` user when root."""
    exe = PG_BINDIR / binary
    if not exe.exists():
        raise RuntimeError(f"{exe} not found; run scripts/provision.sh")
    cmd = [str(exe), *args]
    return ["runuser", "-u", "postgres", "--", *cmd] if _is_root() else cmd


def _run(cmd: Sequence[str], log: Path) -> None:
    """Run ``cmd``, appending its output to ``log``; raise with the log tail on failure."""
    with log.open("ab") as out:
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({result.returncode}):\n{_tail(log)}")


def _tail(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of a text file ('' if it does not exist)."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _give_to_postgres(*paths: Path) -> None:
    """When root, hand ``paths`` to the postgres user and let it reach them."""
    if not _is_root():
        return
    for path in paths:
        shutil.chown(path, user="postgres", group="postgres")
    # Scratch dirs (pytest's tmp_path, mkdtemp) are 0700 root: grant traverse only.
    for parent in paths[0].resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _conf_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _init_cluster(workdir: Path, port: int, password: str) -> Path:
    """Create a fresh cluster in ``workdir/pgdata`` configured for ``port``."""
    pgdata, sockdir, log = workdir / "pgdata", workdir / "pgsocket", workdir / "postgres.log"
    if (pgdata / "postmaster.pid").exists():
        raise RuntimeError(f"a postgres server may still be running on {pgdata}")
    shutil.rmtree(pgdata, ignore_errors=True)
    for directory in (pgdata, sockdir):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    log.touch()
    pwfile = workdir / "pgpass.tmp"
    pwfile.touch(mode=0o600)
    pwfile.write_text(password + "\n")
    _give_to_postgres(pgdata, sockdir, log, pwfile)
    try:
        _run(
            _pg_cmd(
                "initdb",
                "-D",
                str(pgdata),
                "-U",
                PG_SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ),
            log,
        )
    finally:
        pwfile.unlink()
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": str(sockdir),
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
    }
    with (pgdata / "postgresql.conf").open("a") as conf:
        conf.writelines(f"{key} = {_conf_quote(val)}\n" for key, val in settings.items())
    return pgdata


@contextlib.contextmanager
def postgres_cluster(workdir: Path) -> Iterator[Postgres]:
    """Run a PostgreSQL server with an empty ``pgstac`` database; stop it on exit."""
    pg = Postgres(port=free_port(), password=secrets.token_urlsafe(16))
    pgdata = _init_cluster(workdir, pg.port, pg.password)
    log = workdir / "postgres.log"
    try:
        _run(_pg_cmd("pg_ctl", "start", "-w", "-t", "30", "-D", str(pgdata), "-l", str(log)), log)
        _create_database(pg)
        yield pg
    finally:
        if (pgdata / "postmaster.pid").exists():
            _run(_pg_cmd("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(pgdata)), log)


def _create_database(pg: Postgres) -> None:
    """Create the pgstac database, failing early if PostGIS is not installed."""
    with psycopg.connect(pg.dsn("postgres"), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'postgis'")
        if row.fetchone() != (1,):
            raise RuntimeError("PostGIS is not installed for this PostgreSQL; run scripts/provision.sh")
        conn.execute(f"CREATE DATABASE {pg.dbname}")


def load_pgstac(
    dsn: str, collections: Sequence[dict[str, Any]], items: Sequence[dict[str, Any]], migrate: bool = True
) -> None:
    """Load data into the database at ``dsn``, first migrated to the installed pgstac version if ``migrate``."""
    with ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool:
        db = PgstacDB(pool=pool)
        try:
            if migrate:
                Migrate(db).run_migration()
            loader = Loader(db)
            if collections:
                loader.load_collections(iter(collections), Methods.upsert)
            if items:
                loader.load_items(iter(items), Methods.upsert)
        finally:
            db.disconnect()


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll ``url`` until it answers 200; raise with the log tail if it never does."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"STAC API at {url} not up after {STARTUP_TIMEOUT_S:.0f} s:\n{_tail(log)}")


def _api_env(pg: Postgres) -> dict[str, str]:
    """Environment for stac-fastapi-pgstac (read by its pydantic settings)."""
    return {
        **os.environ,
        "PGUSER": pg.user,
        "PGPASSWORD": pg.password,
        "PGHOST": pg.host,
        "PGPORT": str(pg.port),
        "PGDATABASE": pg.dbname,
        "ENABLED_EXTENSIONS": ENABLED_EXTENSIONS,
        "ENABLE_TRANSACTIONS_EXTENSIONS": "false",
        "DB_MIN_CONN_SIZE": "1",
        "DB_MAX_CONN_SIZE": "4",
        "STAC_FASTAPI_TITLE": "EnMAP test STAC API",
        "STAC_FASTAPI_DESCRIPTION": "pgstac-backed STAC API for the test suite",
        "STAC_FASTAPI_LANDING_ID": "enmap-test-stac",
        "STAC_FASTAPI_VERSION": "test",
    }


@contextlib.contextmanager
def stac_fastapi_server(workdir: Path, pg: Postgres) -> Iterator[str]:
    """Serve stac-fastapi-pgstac for ``pg`` on 127.0.0.1; yield its base URL."""
    port, log = free_port(), workdir / "uvicorn.log"
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "stac_fastapi.pgstac.app:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    with log.open("wb") as out:
        # cwd=workdir: the settings classes also read a ``.env`` from the cwd.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_api_env(pg), cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/", proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class StacServer:
    """A running STAC API (stac-fastapi-pgstac on a pgstac database) that collections can be added to."""

    url: str
    dsn: str
    collections: list[str]

    def load(self, collection: dict[str, Any], items: Sequence[dict[str, Any]]) -> str:
        """Upsert ``collection`` and its ``items`` (their ``collection`` set to its id); return its id.

        Searches restricted to a collection (``collections=[id]``) see only its items, so one server
        holds several tests' item sets side by side.
        """
        collection_id = str(collection["id"])
        load_pgstac(self.dsn, [collection], [{**item, "collection": collection_id} for item in items], migrate=False)
        if collection_id not in self.collections:
            self.collections.append(collection_id)
        return collection_id


@contextlib.contextmanager
def stac_server(workdir: Path) -> Iterator[StacServer]:
    """Run an empty STAC API (a migrated pgstac database); ``load`` collections into it. Both servers stop on exit.

    PostgreSQL (data and logs) lives in ``workdir``; ``uvicorn.log`` and ``postgres.log`` there hold
    the server logs.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    with postgres_cluster(workdir) as pg:
        load_pgstac(pg.dsn(), [], [])
        with stac_fastapi_server(workdir, pg) as url:
            yield StacServer(url, pg.dsn(), [])


@contextlib.contextmanager
def stac_api(workdir: Path, collection: dict[str, Any], items: list[dict[str, Any]]) -> Iterator[str]:
    """Run a STAC API holding ``collection`` and ``items``; yield ``http://127.0.0.1:PORT``.

    PostgreSQL (data and logs) lives in ``workdir``; ``uvicorn.log`` and
    ``postgres.log`` there hold the server logs. Both servers stop on exit.
    """
    with stac_server(workdir) as server:
        server.load(collection, items)
        yield server.url
