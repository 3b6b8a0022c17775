"""The layer store: one folder of immutable, content-addressed qcow2 files.

A layer is named by the sha256 of its bytes (``sha256-<hex>.qcow2``); its backing reference is
its parent's file name, relative, in the same folder, so a digest pins the whole chain and no
reference can point outside the store. Work in progress (imports, maintenance overlays, copies
being sealed) lives in the same folder under dot-names and becomes a layer only by an atomic
rename after it is checked and hashed; a sealed layer is read-only (0444) and never reopened for
writing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from goldfleet.domain.names import digest_of_filename, layer_filename
from goldfleet.domain.space import check_room
from goldfleet.errors import BadImage, StoreError
from goldfleet.store.files import (
    Abandoned,
    fsync_dir,
    move_aside,
    signature,
    work_name,
    work_owner,
)
from goldfleet.store.inspect import inspect_image
from goldfleet.store.qemu import Limits, QemuError, QemuImg
from goldfleet.store.space import free_bytes

WORK_PREFIXES = (".import-", ".copy-", ".flat-")
OVERLAY_PREFIX = ".overlay-"
CHUNK = 1 << 20

log = logging.getLogger("goldfleet.store")


@dataclass(frozen=True, slots=True)
class LayerInfo:
    digest: str
    parent: str | None
    size: int
    virtual_size: int


def file_digest(path: Path) -> str:
    with path.open("rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


class LayerStore:
    def __init__(
        self, root: Path, qemu: QemuImg, limits: Limits | None = None, *, owner: str = ""
    ) -> None:
        self.root = root
        self.dir = root / "layers"
        self.incoming = root / "incoming"
        self.qemu = qemu
        self.limits = limits or Limits()
        self.owner = owner  # the server whose work files these are: in their names
        # layer files whose bytes this process hashed to their digest: digest -> signature
        self._checked: dict[str, tuple[int, int, int]] = {}
        self.seed = root / "seed"  # layer files placed by hand (a USB disk) for a sync to take
        self.rejected = root / "rejected"  # files whose bytes did not match their name

    def ensure(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.dir / layer_filename(digest)

    def check_room(self, what: str, estimate: int) -> None:
        """Refuse ``what`` (about ``estimate`` bytes into the store) if the store's disk cannot
        hold it (:class:`NoSpace`, naming the space needed and free)."""
        check_room(what, estimate, free_bytes(self.dir), str(self.root))

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def check_file(self, digest: str) -> str:
        """Whether the layer's file may be used without fetching it again: ``ok`` once its bytes
        hash to ``digest`` (hashed once, then trusted while its size, time and inode stay the
        same), ``missing``, or ``rejected``: its bytes did not match, and it was moved aside
        into ``rejected/`` so that a sync fetches it again."""
        path = self.path(digest)
        sig = signature(path)
        if sig is None:
            return "missing"
        if self._checked.get(digest) == sig:
            return "ok"
        if file_digest(path) == digest:
            self._checked[digest] = sig
            return "ok"
        self._checked.pop(digest, None)
        dest = move_aside(path, self.rejected)
        log.warning("layer file %s does not hash to its name: moved aside to %s", path, dest)
        return "rejected"

    def seed_path(self, digest: str) -> Path:
        return self.seed / layer_filename(digest)

    def take_seed(self, digest: str) -> Path | None:
        """A layer placed in ``seed/`` by hand, as a new private work file (made here, 0600,
        hashed while copied and fsynced, as a download is) if its bytes hash to ``digest``;
        the seed file is then removed. One whose bytes do not match is moved aside into
        ``rejected/`` (None: fetch it)."""
        src = self.seed_path(digest)
        if signature(src) is None:
            return None
        work = self.work_path(".import-seed-")
        h = hashlib.sha256()
        fd = os.open(work, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with src.open("rb") as fsrc, os.fdopen(fd, "wb") as fdst:
                while block := fsrc.read(CHUNK):
                    h.update(block)
                    fdst.write(block)
                fdst.flush()
                os.fsync(fdst.fileno())
        except BaseException:
            work.unlink(missing_ok=True)
            raise
        if "sha256:" + h.hexdigest() != digest:
            work.unlink()
            dest = move_aside(src, self.rejected)
            log.warning("seeded file %s does not hash to its name: moved aside to %s", src, dest)
            return None
        src.unlink(missing_ok=True)
        return work

    def work_path(self, prefix: str) -> Path:
        """A new work file's path in the layer folder (``prefix`` starts with one of
        WORK_PREFIXES), named with this server's id."""
        return self.dir / work_name(prefix, self.owner, secrets.token_hex(8), ".qcow2")

    def incoming_path(self, prefix: str) -> Path:
        """A new file's path in the incoming folder (uploads), named with this server's id."""
        return self.incoming / work_name(f"{prefix}-", self.owner, secrets.token_hex(8))

    # --- making layers --------------------------------------------------------------------

    def import_image(self, src: Path, fmt: str, *, max_virtual_size: int) -> LayerInfo:
        """Inspect an outside image, convert it to a standalone qcow2 and seal it as a base.
        A layer the disk cannot hold is refused before the conversion starts; the estimate is
        what the image holds: its allocated bytes, at most its virtual size."""
        found = inspect_image(
            self.qemu, src, fmt, max_virtual_size=max_virtual_size, limits=self.limits
        )
        self.check_room(
            "the layer of this image", min(src.stat().st_blocks * 512, found.virtual_size)
        )
        work = self.work_path(".import-")
        try:
            self.qemu.convert(src, fmt, work, limits=self.limits)
            return self.seal(work, parent=None)
        finally:
            work.unlink(missing_ok=True)

    def create_overlay(self, parent: str, filename: str) -> Path:
        """A writable overlay on ``parent``, in the layer folder under a temporary name."""
        if not filename.startswith(OVERLAY_PREFIX) or "/" in filename:
            raise StoreError(f"{filename!r} is not an overlay name")
        work = self.dir / filename
        self.qemu.create(work, backing=layer_filename(parent))
        return work

    def seal(self, work: Path, *, parent: str | None) -> LayerInfo:
        """Check a work file, hash it, rename it to its digest and make it read-only."""
        info = self.check_and_hash(work, parent=parent)
        self.commit_work(work, info)
        return info

    def check_and_hash(
        self, work: Path, *, parent: str | None, hashed: str | None = None
    ) -> LayerInfo:
        """Check a work file as if it came from outside and compute its digest.

        The work file must be a clean qcow2 whose only reference is ``parent``'s file name (an
        admin may have changed a maintenance overlay with any tool). It must also be a plain
        file of its own: a symbolic or hard link would let a "sealed" layer be changed from
        outside the store. Nothing is changed.

        ``hashed``: the digest of the file's bytes, computed by the caller while it wrote them
        into a work file it created itself in this folder (``O_EXCL``, 0600) and fsynced, as a
        download from upstream does. That digest is taken instead of reading the whole file
        again (and the file is not fsynced again); every check above still runs, and the file
        must still be such a private work file here."""
        st = os.lstat(work)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise BadImage(
                f"cannot seal {work.name}: it is not a plain file of its own (a link?); put the"
                " image itself there"
            )
        if hashed is not None and (
            work.parent != self.dir
            or stat.S_IMODE(st.st_mode) != 0o600
            or st.st_uid != os.geteuid()
        ):
            raise StoreError(f"{work.name} is not a private work file of the layer store")
        try:
            info = self.qemu.info(work, "qcow2", limits=self.limits)
            report = self.qemu.check(work, "qcow2", limits=self.limits)
        except QemuError as exc:
            raise BadImage(f"cannot seal {work.name}: {exc.message}") from exc
        backing = info.get("backing-filename")
        expected = layer_filename(parent) if parent else None
        if backing != expected or (expected and info.get("backing-filename-format") != "qcow2"):
            raise BadImage(
                f"cannot seal {work.name}: its backing reference is {backing!r}, expected"
                f" {expected!r}; undo the change of backing file and try again"
            )
        specific = (info.get("format-specific") or {}).get("data") or {}
        if "data-file" in specific:
            raise BadImage(f"cannot seal {work.name}: it uses an external data file")
        if report.get("corruptions", 0) or report.get("check-errors", 0):
            raise BadImage(
                f"cannot seal {work.name}: qemu-img check found"
                f" {report.get('corruptions', 0)} corruptions; repair it and try again"
            )
        if hashed is None:
            with work.open("rb") as f:
                os.fsync(f.fileno())
        return LayerInfo(
            digest=hashed or file_digest(work),
            parent=parent,
            size=work.stat().st_size,
            virtual_size=int(info["virtual-size"]),
        )

    def commit_work(self, work: Path, info: LayerInfo) -> None:
        """Make a checked work file the sealed, read-only layer ``info.digest``."""
        final = self.path(info.digest)
        if final.exists():
            work.unlink()  # the same bytes are already sealed
            return
        os.chmod(work, 0o444)
        os.replace(work, final)
        fsync_dir(self.dir)
        sig = signature(final)
        if sig is not None:  # hashed to its digest by check_and_hash (or while received)
            self._checked[info.digest] = sig

    def seal_copy(self, src: Path, *, parent: str) -> LayerInfo:
        """Seal a copy of an overlay that lives elsewhere (a clone's system volume) on ``parent``.

        Only the overlay's own clusters are copied; its backing reference is rewritten to the
        parent's file name, which holds the same data."""
        work = self.work_path(".copy-")
        try:
            shutil.copyfile(src, work)
            self.qemu.rebase_unsafe(work, layer_filename(parent))
            return self.seal(work, parent=parent)
        finally:
            work.unlink(missing_ok=True)

    def seal_standalone_copy(self, src: Path) -> LayerInfo:
        """Seal a flattened copy of any qcow2 chain as a new base layer."""
        work = self.work_path(".flat-")
        try:
            self.qemu.convert(src, "qcow2", work)
            return self.seal(work, parent=None)
        finally:
            work.unlink(missing_ok=True)

    def flatten(self, top: str) -> LayerInfo:
        """Merge the chain ending at ``top`` into a new base layer; the old chain stays."""
        return self.seal_standalone_copy(self.path(top))

    # --- checking and removing ------------------------------------------------------------

    def verify(self, digest: str, parent: str | None) -> list[str]:
        """Problems with one sealed layer: missing, hash, mode, reference, qemu-img check."""
        path = self.path(digest)
        if path.is_symlink():
            return [f"{path.name}: a symbolic link, not a sealed file"]
        if not path.is_file():
            return [f"{path.name}: missing"]
        problems = []
        if file_digest(path) != digest:
            problems.append(f"{path.name}: content does not match its digest")
        if path.stat().st_mode & 0o222:
            problems.append(f"{path.name}: writable (sealed layers must be 0444)")
        try:
            info = self.qemu.info(path, "qcow2", limits=self.limits)
            expected = layer_filename(parent) if parent else None
            if info.get("backing-filename") != expected:
                problems.append(
                    f"{path.name}: backing reference {info.get('backing-filename')!r},"
                    f" expected {expected!r}"
                )
            report = self.qemu.check(path, "qcow2", limits=self.limits)
            if report.get("corruptions", 0) or report.get("check-errors", 0):
                problems.append(
                    f"{path.name}: qemu-img check found {report.get('corruptions', 0)}"
                    f" corruptions and {report.get('check-errors', 0)} errors"
                )
            if report.get("leaks", 0):
                problems.append(f"{path.name}: {report['leaks']} leaked clusters (harmless)")
        except QemuError as exc:
            problems.append(f"{path.name}: qemu-img cannot read it: {exc.message}")
        return problems

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def sealed_digests(self) -> set[str]:
        found = set()
        for entry in os.scandir(self.dir):
            digest = digest_of_filename(entry.name)
            if digest:
                found.add(digest)
        return found

    def remove_work_files(self, keep: Callable[[], set[str]], abandoned: Abandoned) -> list[str]:
        """Remove leftovers of interrupted work: work files and uploads whose server's work was
        ``abandoned`` (a live server's are its own), and overlays that no template names.

        ``keep()`` gives the overlays templates name. It is asked after the folder is listed: a
        template names its overlay before the file is made, so every overlay listed that is
        still wanted is named by then."""
        removed = []
        prefixes = (OVERLAY_PREFIX, *WORK_PREFIXES)
        listed = [e for e in os.scandir(self.dir) if e.name.startswith(prefixes)]
        kept = keep()
        for entry in listed:
            name = entry.name
            if name.startswith(OVERLAY_PREFIX):
                if name in kept:
                    continue
            elif not abandoned(work_owner(name)):
                continue
            _unlink(entry.path)
            removed.append(name)
        for entry in os.scandir(self.incoming):
            if abandoned(work_owner(entry.name)):
                _unlink(entry.path)
                removed.append(f"incoming/{entry.name}")
        return removed


def _unlink(path: str) -> None:
    """Gone already is fine: another starting server removed the same leftover."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
