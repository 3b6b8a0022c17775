"""Shared fixtures: real qemu-img, real SQLite, real server processes on loopback."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from goldfleet.bootstrap import bootstrap
from goldfleet.cli.client import Client, ClientError
from goldfleet.context import Context
from goldfleet.db.engine import make_engine, migrate
from goldfleet.drivers.base import DiskSpec, DomainSpec
from goldfleet.home import init_home
from goldfleet.store.qemu import QemuImg

MiB = 1 << 20


# a loaded CI machine running the suite on several workers: a start took over 30 s there once
START_SECONDS = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_raw(path: Path, size: int = 16 * MiB, fill: dict[int, bytes] | None = None) -> Path:
    """A raw disk image of ``size`` bytes with ``fill`` (offset → bytes) written into it."""
    with path.open("wb") as f:
        f.truncate(size)
        for offset, data in (fill or {}).items():
            f.seek(offset)
            f.write(data)
    return path


@pytest.fixture
def qemu() -> QemuImg:
    return QemuImg()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("GOLDFLEET_HOME", str(h))
    return h


@pytest.fixture
def ctx(home: Path) -> Iterator[Context]:
    """The service layer on a fresh home (no server process)."""
    settings, _ = init_home(home)
    c = bootstrap(settings)
    yield c
    c.runner.shutdown()  # type: ignore[union-attr]
    c.engine.dispose()


@dataclass
class Server:
    """A real ``goldfleet serve`` process on loopback, restartable and killable."""

    home: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return (self.home / "admin.token").read_text().strip()

    def client(self, token: str | None = "admin") -> Client:
        return Client(self.url, self.token if token == "admin" else token)

    def rows(self, sql: str, *params: Any) -> list[tuple]:
        """Rows of the server's SQLite database, read-only."""
        conn = sqlite3.connect(f"file:{self.home / 'goldfleet.db'}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def start(self) -> None:
        env = {**os.environ, "GOLDFLEET_HOME": str(self.home), **self.env}
        self.log = open(self.home.parent / f"server-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "goldfleet", "serve", "--port", str(self.port)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        probe = Client(self.url, None, timeout=2)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                probe.get("/health")
                return
            except ClientError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not start within {START_SECONDS} s")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def server(home: Path) -> Iterator[Server]:
    srv = Server(home=home)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: Server) -> Client:
    return server.client()


@pytest.fixture
def template(client: Client, tmp_path: Path) -> str:
    """Template ``base``: 16 MiB raw system (0x11 at 0 and 1 MiB), one 64M temp, one 64M data."""
    image = make_raw(tmp_path / "base.raw", fill={0: b"\x11" * 4096, MiB: b"\x11" * 4096})
    client.upload(
        "/templates/import",
        image,
        {"name": "base", "format": "raw", "temp": ["64M"], "data": ["64M"]},
    )
    return "base"


# --- driver tests -------------------------------------------------------------------------


def qemu_img_create(path: Path, size: str, backing: Path | None = None) -> Path:
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        cmd += ["-b", backing.name, "-F", "qcow2"]
    subprocess.run([*cmd, str(path), size], check=True, cwd=path.parent)
    return path


@pytest.fixture
def fresh_db(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """goldfleet's schema on a fresh SQLite file, as bootstrap makes it (no home, no server)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'goldfleet.db'}")
    migrate(engine)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


@pytest.fixture(scope="session")
def vm_disks(tmp_path_factory: pytest.TempPathFactory) -> tuple[DiskSpec, ...]:
    """A clone's disks as real qcow2 files: a system overlay on a base layer, temp and data."""
    folder = tmp_path_factory.mktemp("disks")
    base = qemu_img_create(folder / "base.qcow2", "16M")
    system = qemu_img_create(folder / "system.qcow2", "16M", backing=base)
    return (
        DiskSpec(role="system", path=str(system), backing=(str(base),)),
        DiskSpec(role="temp", path=str(qemu_img_create(folder / "temp.qcow2", "8M"))),
        DiskSpec(role="data", path=str(qemu_img_create(folder / "data.qcow2", "8M"))),
    )


@pytest.fixture
def vm_spec(vm_disks: tuple[DiskSpec, ...]) -> Callable[..., DomainSpec]:
    """``vm_spec(name)``: a small VM on the real disks (or on ``disks=`` others)."""

    def make(name: str, disks: tuple[DiskSpec, ...] = vm_disks) -> DomainSpec:
        return DomainSpec(name=name, disks=disks, memory_mib=128, vcpus=1)

    return make
