"""End-to-end helpers: one ``fleet`` object that drives a real server and looks at real files.

Everything here observes outcomes the way an admin could: HTTP answers, bytes read back through
qemu-io, files and their modes, rows of the SQLite database, and the CLI as a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from goldfleet.cli.client import Client, ClientError
from goldfleet.store.qemu import QemuImg

MiB = 1 << 20


@dataclass(frozen=True)
class FileState:
    """What proves a file was not opened for writing, copied or moved."""

    sha256: str
    inode: int
    mtime_ns: int
    size: int

    @classmethod
    def of(cls, path: Path) -> FileState:
        st = path.stat()
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        return cls(digest, st.st_ino, st.st_mtime_ns, st.st_size)


def make_raw(path: Path, size: int = 16 * MiB, fill: dict[int, bytes] | None = None) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
        for offset, data in (fill or {}).items():
            f.seek(offset)
            f.write(data)
    return path


def _under_way(op: dict) -> bool:
    """Running, being cancelled, or scheduled at a time already past (the runner starts it at
    its next pass): what ``wait`` waits through. A start still ahead is an answer."""
    if op["status"] in ("running", "cancelling"):
        return True
    if op["status"] != "scheduled" or not op.get("start_at"):
        return False
    start = datetime.fromisoformat(op["start_at"])
    return (start if start.tzinfo else start.replace(tzinfo=UTC)) <= datetime.now(UTC)


@dataclass
class Fleet:
    server: Any  # tests/conftest.py Server
    client: Client
    qemu: QemuImg
    home: Path
    tmp: Path

    # --- places ---------------------------------------------------------------------------

    @property
    def store(self) -> Path:
        return self.home / "store"

    @property
    def layers_dir(self) -> Path:
        return self.store / "layers"

    @property
    def clones_dir(self) -> Path:
        return self.store / "clones"

    def layer_file(self, digest: str) -> Path:
        return self.layers_dir / f"sha256-{digest.removeprefix('sha256:')}.qcow2"

    # --- API helpers ----------------------------------------------------------------------

    def error(self, status: int, fn: Callable[..., Any], *args: Any, **kw: Any) -> str:
        """Call ``fn`` expecting a ClientError with ``status``; return its message."""
        with pytest.raises(ClientError) as info:
            fn(*args, **kw)
        assert info.value.status == status, info.value.message
        return info.value.message

    def import_template(
        self,
        name: str,
        fill: dict[int, bytes],
        *,
        temp: list[str] | None = None,
        data: list[str] | None = None,
        kind: str = "linked",
    ) -> dict:
        image = make_raw(self.tmp / f"image-{secrets.token_hex(6)}.raw", fill=fill)
        return self.client.upload(
            "/templates/import",
            image,
            {
                "name": name,
                "format": "raw",
                "kind": kind,
                "temp": temp if temp is not None else ["64M"],
                "data": data if data is not None else ["64M"],
            },
        )

    def create(
        self,
        *,
        count: int | None = None,
        name: str | None = None,
        template: str = "base",
        full: bool = False,
    ) -> list[str]:
        body = {"template": template, "count": count, "name": name, "full": full, "wait": True}
        r = self.client.post("/clones", body)
        assert r["operation"]["status"] == "done", r["operation"]
        return r["clones"]

    def show(self, name: str) -> dict:
        return self.client.get(f"/clones/{name}")

    def volumes(self, name: str) -> dict[str, Path]:
        """``system``, ``temp0``, ``data0``… → path, from ``clone show``."""
        return {
            f"{v['role']}" if v["role"] == "system" else f"{v['role']}{v['index']}": Path(v["path"])
            for v in self.show(name)["volumes"]
        }

    def wait(self, op_id: int, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            op = self.client.get(f"/operations/{op_id}")
            if not _under_way(op):
                return op
            assert time.monotonic() < deadline, f"operation {op_id} still running: {op}"
            time.sleep(0.05)

    def update(self, template: str = "base", byte: int = 0x22, recreate: str = "none") -> dict:
        """One maintenance round: enter, write ``byte`` at 1 MiB into the overlay, exit."""
        t = self.client.post(f"/templates/{template}/maintenance/enter")
        self.qemu.write_pattern(Path(t["overlay_path"]), MiB, 4096, byte)
        return self.client.post(f"/templates/{template}/maintenance/exit", {"recreate": recreate})

    def versions(self, template: str = "base") -> list[dict]:
        return self.client.get(f"/templates/{template}/versions")

    # --- bytes through qemu ---------------------------------------------------------------

    def read(self, path: Path, offset: int, length: int = 4096) -> bytes:
        return self.qemu.read(path, offset, length)

    def write(self, path: Path, offset: int, data: bytes) -> None:
        self.qemu.write(path, offset, data, scratch=self.tmp / f"scratch-{secrets.token_hex(8)}")

    def pattern(self, path: Path, offset: int, byte: int, length: int = 4096) -> None:
        self.qemu.write_pattern(path, offset, length, byte)

    def shows(self, path: Path, offset: int, byte: int, length: int = 4096) -> bool:
        return self.read(path, offset, length) == bytes([byte]) * length

    def check_image(self, path: Path) -> dict:
        """``qemu-img check`` with the format given, as JSON (exit code 0 means clean)."""
        proc = subprocess.run(
            ["qemu-img", "check", "-f", "qcow2", "--output=json", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        report = json.loads(proc.stdout) if proc.stdout.strip() else {}
        report["exit_code"] = proc.returncode
        return report

    def image_info(self, path: Path) -> dict:
        proc = subprocess.run(
            ["qemu-img", "info", "-f", "qcow2", "--output=json", str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(proc.stdout)

    def parallel(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(fn, items))

    # --- rows and files -------------------------------------------------------------------

    def state(self, path: Path) -> FileState:
        return FileState.of(path)

    def rows(self, sql: str, *params: Any) -> list[tuple]:
        return self.server.rows(sql, *params)

    def clone_uids(self) -> dict[str, str]:
        return dict(self.rows("SELECT uid, name FROM clones"))

    def clone_folders(self) -> set[str]:
        return {p.name for p in self.clones_dir.iterdir() if p.is_dir()}

    def work_files(self) -> list[Path]:
        """Leftovers of interrupted work: ``*.new`` in clone folders, dot-files in layers."""
        return [*self.clones_dir.rglob("*.new"), *self.layers_dir.glob(".*")]

    # --- the CLI --------------------------------------------------------------------------

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        base = {
            k: v
            for k, v in os.environ.items()
            if k not in ("COLUMNS", "LINES", "GOLDFLEET_URL", "GOLDFLEET_TOKEN")
        }
        return subprocess.run(
            [sys.executable, "-m", "goldfleet", *args],
            env={**base, "GOLDFLEET_HOME": str(self.home), **(env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def cli_json(self, *args: str) -> Any:
        proc = self.cli(*args, "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)


@pytest.fixture
def fleet(server: Any, client: Client, qemu: QemuImg, home: Path, tmp_path: Path) -> Fleet:
    return Fleet(server=server, client=client, qemu=qemu, home=home, tmp=tmp_path)


@pytest.fixture
def small_batches(server: Any) -> Iterator[None]:
    """Bulk operations commit every 10 clones, so a kill -9 lands mid-way reliably."""
    server.env["GOLDFLEET_BATCH_SIZE"] = "10"
    server.restart()
    yield
