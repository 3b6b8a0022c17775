"""Work held in flight in a real server, for the tests of a second server starting beside it.

- :class:`HeldUpload`: a template import whose request body stops half-way until released;
  its file in the store's ``incoming/`` folder is the upload in progress.
- :func:`held_checks`: a ``qemu-img`` first on the server's PATH that, while a *hold* file
  exists, waits before it checks a maintenance overlay, as a slow check of a large overlay
  would; a maintenance exit then stays ``exiting-maintenance`` until the test removes the file.
  Every other call runs the real qemu-img at once.
- :func:`serve_once`: ``goldfleet serve`` as an admin would start it; how it ended, or that it
  came up (then it is stopped).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from goldfleet.cli.client import Client, ClientError

MiB = 1 << 20


def root_conftest() -> Any:
    """tests/conftest.py (``import conftest`` here finds tests/e2e/conftest.py instead)."""
    path = Path(__file__).parents[1] / "conftest.py"
    spec = importlib.util.spec_from_file_location("goldfleet_tests_root_conftest", path)
    assert spec is not None and spec.loader is not None
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


def held_checks(tmp: Path) -> tuple[dict[str, str], Path]:
    """The environment that puts the holding qemu-img first on a server's PATH, and the hold
    file (absent: nothing is held)."""
    bindir = tmp / "held-bin"
    bindir.mkdir(exist_ok=True)
    hold = tmp / "hold-overlay-checks"
    real = shutil.which("qemu-img")
    assert real is not None, "qemu-img is not installed"
    script = bindir / "qemu-img"
    script.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        f'  check*/.overlay-*) while [ -e "{hold}" ]; do sleep 0.05; done ;;\n'
        "esac\n"
        f'exec "{real}" "$@"\n'
    )
    script.chmod(0o755)
    return {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}, hold


@dataclass
class HeldUpload:
    """``POST /templates/import`` of a 16 MiB raw image, its body stopped after 8 MiB."""

    client: Client
    image: Path
    name: str
    half: threading.Event = field(default_factory=threading.Event)
    go: threading.Event = field(default_factory=threading.Event)
    result: list[object] = field(default_factory=list)
    thread: threading.Thread | None = None

    def _body(self) -> Iterator[bytes]:
        with self.image.open("rb") as f:
            for i, block in enumerate(iter(lambda: f.read(MiB), b"")):
                if i == 8:
                    self.half.set()
                    self.go.wait(120)
                yield block

    def _send(self) -> None:
        try:
            self.result.append(
                self.client.request(
                    "POST",
                    "/templates/import",
                    params={"name": self.name, "format": "raw", "temp": ["64M"], "data": []},
                    content=self._body(),
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(self.image.stat().st_size),
                    },
                )
            )
        except Exception as exc:  # the test reads it
            self.result.append(exc)

    def start(self, incoming: Path) -> Path:
        """Send the first half; returns the upload's file in ``incoming``."""
        before = set(incoming.iterdir())
        self.thread = threading.Thread(target=self._send, daemon=True)
        self.thread.start()
        assert self.half.wait(30), "the upload did not start"
        deadline = time.monotonic() + 30
        while True:
            new = [p for p in incoming.iterdir() if p not in before]
            if new and new[0].stat().st_size >= 4 * MiB:
                return new[0]
            assert time.monotonic() < deadline, "the upload never reached the store"
            time.sleep(0.02)

    def finish(self) -> object:
        """Send the rest; the server's answer (or the error the client met)."""
        self.go.set()
        assert self.thread is not None
        self.thread.join(120)
        return self.result[0]


def call_in_thread(fn: Any, *args: Any, **kwargs: Any) -> tuple[threading.Thread, list[object]]:
    """Run one API call in a thread; its answer (or error) lands in the list."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn(*args, **kwargs))
        except Exception as exc:  # the test reads it
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


@dataclass
class Ended:
    """How a ``goldfleet serve`` ended: its exit code and stderr (``came_up``: it served)."""

    code: int | None
    stderr: str
    came_up: bool = False


def serve_once(home: Path, port: int, env: dict[str, str] | None = None) -> Ended:
    """``goldfleet serve --port PORT`` on ``home``: wait until it exits or answers /health."""
    log = home.parent / f"serve-once-{port}.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "goldfleet", "serve", "--port", str(port)],
            env={**os.environ, "GOLDFLEET_HOME": str(home), **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        probe = Client(f"http://127.0.0.1:{port}", None, timeout=2)
        deadline = time.monotonic() + 60
        came_up = False
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                probe.get("/health")
                came_up = True
                break
            except ClientError:
                time.sleep(0.05)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return Ended(None if came_up else proc.returncode, log.read_text(), came_up)
