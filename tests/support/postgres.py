"""A throwaway PostgreSQL server for the tests: Debian's package, a cluster of the session's own.

PostgreSQL refuses to run as root, and CI runs as root: the cluster then belongs to the
`postgres` system user, which runs initdb and the server. It listens on a free loopback port
only, with password authentication (scram-sha-256), and is stopped and removed at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import IN_CI

PASSWORD = "Tr0ub4dor-and-3-horses"   # the tests grep every output for it
USER, DATABASE = "segment", "shop"


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    root: Path
    bindir: Path

    def url(self, query: str = "", user: str = USER, database: str = DATABASE, password: str | None = None) -> str:
        secret = f":{password}" if password else ""
        return f"postgresql://{user}{secret}@{self.host}:{self.port}/{database}{query}"

    def env(self, password: str = PASSWORD) -> dict[str, str]:
        return {"PGPASSWORD": password}

    def sql(self, statement: str, database: str = DATABASE, user: str = USER) -> str:
        """Run SQL with psql as the test user; the output as text."""
        done = subprocess.run([str(self.bindir / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                               "-h", self.host, "-p", str(self.port), "-U", user, "-d", database, "-c", statement],
                              capture_output=True, text=True, timeout=300, env={**os.environ, "PGPASSWORD": PASSWORD})
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr}")
        return done.stdout.strip()

    def load_parquet(self, path: Path, table: str, columns: list[str] | None = None) -> None:
        """A Parquet file into a new table, rows in file order (ADBC's COPY)."""
        import adbc_driver_postgresql.dbapi as pg
        import pyarrow.parquet as pq

        data = pq.read_table(path, columns=columns)
        data = data.drop_columns([c for c in data.column_names if c.startswith("__index_level_")])
        schema, _, name = table.rpartition(".")
        with pg.connect(self.url(password=PASSWORD)) as connection:
            with connection.cursor() as cursor:
                cursor.adbc_ingest(name, data, mode="replace", db_schema_name=schema or None)
            connection.commit()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start() -> Server:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        message = "PostgreSQL is not installed (apt-get install postgresql); .ci/run installs it"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    bindir = found[-1].parent
    root = Path(tempfile.mkdtemp(prefix="segment-pg-"))
    as_postgres = os.geteuid() == 0
    run_as = ["runuser", "-u", "postgres", "--"] if as_postgres else []
    if as_postgres:
        shutil.chown(root, "postgres", "postgres")
    password_file = root / "password"
    password_file.write_text(PASSWORD + "\n")
    if as_postgres:
        shutil.chown(password_file, "postgres", "postgres")
    port = _free_port()
    data = root / "data"

    def run(*command: str) -> None:
        done = subprocess.run([*run_as, *command], capture_output=True, text=True, timeout=300, cwd=root)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stdout}\n{done.stderr}")

    run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", f"--pwfile={password_file}",
        "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "120", "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    server = Server(host="127.0.0.1", port=port, root=root, bindir=bindir)
    admin = {**os.environ, "PGPASSWORD": PASSWORD}
    for statement, database in ((f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'", "postgres"),
                                (f"CREATE DATABASE {DATABASE} OWNER {USER}", "postgres")):
        done = subprocess.run([str(bindir / "psql"), "-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port),
                               "-U", "postgres", "-d", database, "-c", statement],
                              capture_output=True, text=True, timeout=120, env=admin)
        if done.returncode != 0:
            stop(server)
            raise RuntimeError(f"setting up the test database failed: {done.stderr}")
    return server


def stop(server: Server) -> None:
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*run_as, str(server.bindir / "pg_ctl"), "-D", str(server.root / "data"), "-m", "fast", "-w",
                    "stop"], capture_output=True, timeout=120)
    time.sleep(0.2)
    shutil.rmtree(server.root, ignore_errors=True)
