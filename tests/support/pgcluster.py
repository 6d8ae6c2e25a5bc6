"""A real PostgreSQL cluster of a test's own, to stop and start under a live gateway (the shared one is never touched)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest


def _bin_dir() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


class ThrowawayPostgres:
    """initdb into a temporary directory, served on a free port with its socket in that directory.

    PostgreSQL refuses to run as root: as root, every server command runs as the `postgres` OS user.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.bin = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="pg-faults-"))
        self.data = self.root / "data"
        self.logfile = self.root / "server.log"

    # --- running commands ------------------------------------------------------------------------
    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return argv

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        assert self.bin is not None
        subprocess.run(
            self._as_owner([str(self.bin / tool), *args]), check=True, timeout=timeout, capture_output=True, cwd=self.root
        )

    # --- life cycle ---------------------------------------------------------------------------------
    def init(self) -> ThrowawayPostgres:
        if self.bin is None:
            pytest.skip("no PostgreSQL server binaries (initdb) on this machine")
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                pytest.skip("running as root without runuser: cannot start a PostgreSQL server")
            shutil.chown(self.root, user="postgres", group="postgres")
        # fsync off: a test cluster, thrown away; it only has to survive a clean stop and start.
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
        return self

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.logfile), "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def is_running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def remove(self) -> None:
        try:
            if self.is_running():
                self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # --- using it -------------------------------------------------------------------------------------
    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def query(self, database: str, sql: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.url(database), connect_timeout=5) as conn:
            return conn.execute(sql, params).fetchall()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
