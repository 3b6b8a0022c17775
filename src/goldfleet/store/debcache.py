"""The cache of Debian packages a cluster's sync downloaded (docs/hosts.md): one folder per
cluster and coordinator, ``STORE/host-updates/CLUSTER/COORDINATOR/``, each ``.deb`` under its
sha256 and its repository file name (``<sha256>_<basename>``), so a file is found from the
verified digest, never from a repository string alone. A file is written to a dot-named work
file, fsynced, checked against its sha256 and size, then renamed into place: a file present
under its name holds exactly those bytes."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from goldfleet.errors import InvalidInput, StoreError

_BASENAME_RE = re.compile(r"[A-Za-z0-9+_.~-]{1,200}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


class Mismatch(StoreError):
    """Downloaded bytes are not the ones the signed index names; the file was not kept."""

    status_code = 502


class DebCache:
    def __init__(self, store: Path) -> None:
        self.root = store / "host-updates"

    def folder(self, cluster: str, coordinator: str) -> Path:
        return self.root / cluster / coordinator

    def path(self, cluster: str, coordinator: str, sha256: str, filename: str) -> Path:
        base = filename.rsplit("/", 1)[-1]
        if not _SHA256_RE.fullmatch(sha256) or not _BASENAME_RE.fullmatch(base):
            raise InvalidInput(f"{filename!r} ({sha256!r}) cannot name a cached package")
        return self.folder(cluster, coordinator) / f"{sha256}_{base}"

    def held(self, path: Path, sha256: str, size: int) -> bool:
        """The file is there with exactly these bytes (read again: a cache is checked on use)."""
        try:
            if path.stat().st_size != size:
                return False
            with path.open("rb") as f:
                return hashlib.file_digest(f, "sha256").hexdigest() == sha256
        except FileNotFoundError:
            return False

    def put(
        self,
        path: Path,
        chunks: Iterable[bytes],
        sha256: str,
        size: int,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Write ``chunks`` to ``path`` if they are ``size`` bytes hashing to ``sha256``;
        else keep nothing and raise :class:`Mismatch`. Returns the bytes written; ``progress``
        is told the size of each chunk as it is written."""
        path.parent.mkdir(parents=True, exist_ok=True)
        work = path.with_name(f".{path.name}.{os.getpid()}.part")
        digest = hashlib.sha256()
        written = 0
        try:
            with work.open("wb") as f:
                for chunk in chunks:
                    written += len(chunk)
                    if written > size:
                        raise Mismatch(
                            f"{path.name.split('_', 1)[1]}: more than the {size} bytes the"
                            " signed index names; not kept"
                        )
                    digest.update(chunk)
                    f.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
                f.flush()
                os.fsync(f.fileno())
            got = digest.hexdigest()
            if written != size or got != sha256:
                raise Mismatch(
                    f"{path.name.split('_', 1)[1]}: sha256 {got} ({written} bytes) differs from"
                    f" the signed index's {sha256} ({size} bytes); not kept"
                )
            os.replace(work, path)
        finally:
            work.unlink(missing_ok=True)
        return written

    def clear_work(self, cluster: str) -> int:
        """Remove the work files a sync of ``cluster`` killed mid-download left behind; call
        only while holding that cluster's sync (no other writer)."""
        folder = self.root / cluster
        removed = 0
        if folder.is_dir():
            for work in folder.glob("*/.*.part"):
                work.unlink(missing_ok=True)
                removed += 1
        return removed

    def files(self, cluster: str, coordinator: str) -> list[Path]:
        folder = self.folder(cluster, coordinator)
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
