"""A narrow wrapper around qemu-img and qemu-io.

Every call names the image format (``-f``, and ``-F`` for a backing file), so nothing is ever
probed; output is read as JSON. Calls on images from outside run under resource limits through
util-linux ``prlimit``, so a hostile header cannot make qemu-img spin or eat memory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from goldfleet.errors import StoreError

FORMATS = ("qcow2", "raw")
_HEXDUMP_RE = re.compile(r"[0-9a-f]{8,}:  ((?:[0-9a-f]{2} ){1,16})")


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits for inspecting untrusted images."""

    cpu_seconds: int = 30
    address_space: int = 1 << 30
    wall_seconds: float = 60.0


class QemuError(StoreError):
    """qemu-img or qemu-io exited non-zero; ``stderr`` holds its words."""

    def __init__(self, message: str, stderr: str, returncode: int) -> None:
        super().__init__(message)
        self.stderr = stderr
        self.returncode = returncode


class QemuImg:
    """Runs qemu-img and qemu-io. One instance per store; stateless."""

    def __init__(self, qemu_img: str = "qemu-img", qemu_io: str = "qemu-io") -> None:
        self.qemu_img = shutil.which(qemu_img) or qemu_img
        self.qemu_io = shutil.which(qemu_io) or qemu_io
        self.prlimit = shutil.which("prlimit")

    def _run(
        self,
        argv: list[str],
        *,
        limits: Limits | None = None,
        ok_codes: tuple[int, ...] = (0,),
        timeout: float | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        tool = Path(argv[0]).name
        if limits is not None:
            if self.prlimit is None:
                raise StoreError("prlimit (util-linux) is missing; cannot inspect images safely")
            argv = [
                self.prlimit,
                f"--cpu={limits.cpu_seconds}",
                f"--as={limits.address_space}",
                "--",
                *argv,
            ]
            timeout = limits.wall_seconds
        env = None
        if limits is not None:
            # fewer malloc arenas: thread start-up must fit under the address-space cap
            env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
        try:
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                env=env,
                cwd=cwd,
            )
        except FileNotFoundError as exc:
            raise StoreError(
                f"{argv[0]} is not installed; install Debian's qemu-utils (make demo does)"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise QemuError(f"{tool} timed out", "timeout", -1) from exc
        if proc.returncode not in ok_codes:
            # qemu-io reports its errors on stdout
            words = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
            raise QemuError(
                words[-1] if words else f"exit code {proc.returncode}",
                proc.stderr,
                proc.returncode,
            )
        return proc

    # --- qemu-img -------------------------------------------------------------------------

    def info(self, path: Path, fmt: str, *, limits: Limits | None = None) -> dict[str, Any]:
        """``qemu-img info`` of one image (not its chain), as JSON."""
        proc = self._run(
            [self.qemu_img, "info", "-f", fmt, "--output=json", str(path)], limits=limits
        )
        return json.loads(proc.stdout)

    def chain_info(self, path: Path, fmt: str = "qcow2") -> list[dict[str, Any]]:
        """``qemu-img info --backing-chain``; backing formats come from the headers (-F)."""
        proc = self._run(
            [self.qemu_img, "info", "-f", fmt, "--backing-chain", "--output=json", str(path)]
        )
        out = json.loads(proc.stdout)
        return out if isinstance(out, list) else [out]

    def check(self, path: Path, fmt: str = "qcow2", *, limits: Limits | None = None) -> dict:
        """``qemu-img check``: exit 0 clean, 2 corrupt, 3 leaks — all reported as JSON."""
        proc = self._run(
            [self.qemu_img, "check", "-f", fmt, "--output=json", str(path)],
            limits=limits,
            ok_codes=(0, 2, 3),
        )
        try:
            result = json.loads(proc.stdout)
        except json.JSONDecodeError as exc:
            raise QemuError("qemu-img check gave no report", proc.stderr, proc.returncode) from exc
        result["exit_code"] = proc.returncode
        return result

    def create(
        self,
        path: Path,
        *,
        size: int | None = None,
        backing: str | None = None,
        unsafe: bool = False,
    ) -> None:
        """Create a qcow2 image; ``backing`` is a qcow2 file name relative to ``path``."""
        argv = [self.qemu_img, "create", "-q", "-f", "qcow2"]
        if backing is not None:
            argv += ["-b", backing, "-F", "qcow2"]
            if unsafe:
                argv.append("-u")
        argv.append(str(path))
        if size is not None:
            argv.append(str(size))
        self._run(argv)

    def convert(self, src: Path, src_fmt: str, dst: Path, *, limits: Limits | None = None) -> None:
        """Copy ``src`` into a new standalone qcow2 (a whole chain is flattened)."""
        argv = [self.qemu_img, "convert", "-q", "-f", src_fmt, "-O", "qcow2", str(src), str(dst)]
        if limits is not None:
            # the image passed inspection; conversion of a large one takes time and qemu's
            # worker threads reserve address space: keep a cap, but a wider one
            limits = Limits(
                cpu_seconds=24 * 3600,
                address_space=max(limits.address_space, 4 << 30),
                wall_seconds=24 * 3600,
            )
        self._run(argv, limits=limits)

    def rebase_unsafe(self, path: Path, backing: str) -> None:
        """Rewrite only the backing reference of ``path`` (both files hold the same data)."""
        self._run(
            [
                self.qemu_img,
                "rebase",
                "-q",
                "-u",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                backing,
                str(path),
            ]
        )

    # --- qemu-io: reading and writing guest-visible bytes -----------------------------------

    def read(self, path: Path, offset: int, length: int, fmt: str = "qcow2") -> bytes:
        """Read guest-visible bytes through qemu's block layer (the whole backing chain)."""
        proc = self._run(
            [self.qemu_io, "-r", "-f", fmt, "-c", f"read -v {offset} {length}", str(path)]
        )
        data = bytearray()
        for line in proc.stdout.splitlines():
            m = _HEXDUMP_RE.match(line)
            if m is None:
                continue
            want = min(16, length - len(data))
            data.extend(int(h, 16) for h in m.group(1).split()[:want])
        if len(data) != length:
            raise QemuError(f"qemu-io read {len(data)} of {length} bytes", proc.stdout, 0)
        return bytes(data)

    def write(self, path: Path, offset: int, data: bytes, *, scratch: Path) -> None:
        """Write ``data`` at ``offset`` through qemu's block layer.

        qemu-io splits its command on spaces, so the bytes go through a file with a plain name
        in the folder ``scratch`` names, passed relative to it."""
        folder = scratch if scratch.is_dir() else scratch.parent
        name = f"goldfleet-write-{os.getpid()}-{threading.get_ident()}.bin"
        (folder / name).write_bytes(data)
        try:
            self._run(
                [
                    self.qemu_io,
                    "-f",
                    "qcow2",
                    "-c",
                    f"write -s {name} {offset} {len(data)}",
                    str(path.resolve()),
                ],
                cwd=folder,
            )
        finally:
            (folder / name).unlink(missing_ok=True)

    def write_pattern(self, path: Path, offset: int, length: int, pattern: int) -> None:
        self._run(
            [self.qemu_io, "-f", "qcow2", "-c", f"write -P {pattern} {offset} {length}", str(path)]
        )
