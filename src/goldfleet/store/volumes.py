"""Clone volumes: one folder per clone, holding system, temp and data qcow2 files.

A linked clone's system volume is an overlay whose backing reference is the version's top layer,
by relative path (``../../layers/sha256-….qcow2``); a full clone's is a flattened copy. Temp and
data volumes are standalone images of the outline's sizes.

Creating thousands of volumes is the hot path of goldfleet. An empty qcow2 of a given size, and an
empty overlay on a given layer, are the same bytes every time qemu-img makes them, so qemu-img
makes each kind once into ``cache/`` (a *prototype*) and every further volume is a file copy of
it: the same bytes, without a process start per file. A small prototype (an empty qcow2 or an
overlay: a few hundred KiB, almost all zeroes) is read once into memory as its non-zero pages,
and each copy writes only those, the rest left as holes: reading a copy back gives exactly the
prototype's bytes, with a twentieth of the writing. A large one (a full clone's flattened copy)
is copied in the kernel (``copy_file_range``).

Every replacement builds the new file beside the old one (``*.new``) and renames it over; data
volumes are created once and never opened, copied or moved afterwards.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from goldfleet.domain.model import CloneKind, Outline, VolumeRole
from goldfleet.domain.names import layer_filename
from goldfleet.domain.space import check_room
from goldfleet.store.files import Abandoned, fsync_dir, work_name, work_owner
from goldfleet.store.layers import LayerStore
from goldfleet.store.qemu import QemuError, QemuImg
from goldfleet.store.space import free_bytes

SYSTEM_FILE = "system.qcow2"
SMALL_PROTOTYPE = 4 << 20  # prototypes up to this size are held in memory as their pages
PAGE = 4096


@dataclass(frozen=True, slots=True)
class _Image:
    key: tuple[int, int, int]  # (inode, size, mtime) of the prototype it was read from
    size: int
    runs: tuple[tuple[int, bytes], ...]  # (offset, bytes) of the runs of non-zero pages


def nonzero_runs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    """The runs of ``PAGE``-sized pages of ``data`` that are not all zeroes, as (offset, bytes);
    a file of ``len(data)`` bytes holding only these (holes elsewhere) reads back as ``data``."""
    runs: list[tuple[int, bytes]] = []
    zero = bytes(PAGE)
    start: int | None = None
    for offset in range(0, len(data), PAGE):
        page = data[offset : offset + PAGE]
        if page == zero[: len(page)]:
            if start is not None:
                runs.append((start, data[start:offset]))
                start = None
        elif start is None:
            start = offset
    if start is not None:
        runs.append((start, data[start:]))
    return tuple(runs)


def _copy_in_kernel(src: Path, fd: int) -> None:
    """All of ``src`` into ``fd`` without a user-space buffer where the kernel can
    (``copy_file_range``), else through one."""
    with src.open("rb") as fsrc:
        left = os.fstat(fsrc.fileno()).st_size
        try:
            while left > 0:
                done = os.copy_file_range(fsrc.fileno(), fd, min(left, 1 << 30))
                if done == 0:
                    break
                left -= done
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
        fsrc.seek(0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        with os.fdopen(os.dup(fd), "wb") as fdst:
            shutil.copyfileobj(fsrc, fdst, 1 << 20)


class VolumeStore:
    def __init__(self, root: Path, qemu: QemuImg, layers: LayerStore) -> None:
        self.dir = root / "clones"
        self.cache = root / "cache"
        self.qemu = qemu
        self.layers = layers
        self._lock = threading.Lock()
        self._images: dict[str, _Image] = {}  # small prototypes' non-zero pages, by path
        self._unsynced = False  # a clone folder was made since clones/ was last fsynced
        self._sync_lock = threading.Lock()

    def ensure(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cache.mkdir(parents=True, exist_ok=True)

    def clone_dir(self, uid: str) -> Path:
        return self.dir / uid

    def path(self, uid: str, filename: str) -> Path:
        return self.dir / uid / filename

    # --- prototypes -----------------------------------------------------------------------

    def _prototype(self, key: str, make: callable) -> Path:  # type: ignore[valid-type]
        proto = self.cache / key
        if proto.exists():
            return proto
        with self._lock:
            if not proto.exists():
                work = self.cache / work_name(f".{key}.", self.layers.owner, secrets.token_hex(4))
                try:
                    make(work)
                    os.replace(work, proto)
                finally:  # a part written to a full disk would hold the space it lacked
                    work.unlink(missing_ok=True)
        return proto

    def _blank_prototype(self, size: int) -> Path:
        return self._prototype(
            f"blank-{size}.qcow2", lambda work: self.qemu.create(work, size=size)
        )

    def _overlay_prototype(self, top: str, virtual_size: int) -> Path:
        backing = f"../../layers/{layer_filename(top)}"
        return self._prototype(
            f"overlay-{top.removeprefix('sha256:')}-{virtual_size}.qcow2",
            lambda work: self.qemu.create(work, size=virtual_size, backing=backing, unsafe=True),
        )

    def _full_prototype(self, top: str) -> Path:
        return self._prototype(
            f"full-{top.removeprefix('sha256:')}.qcow2",
            lambda work: self.qemu.convert(self.layers.path(top), "qcow2", work),
        )

    def check_room(self, what: str, estimate: int) -> None:
        """Refuse ``what`` (about ``estimate`` bytes of clone volumes) if the disk cannot hold
        it (:class:`NoSpace`, naming the space needed and free)."""
        check_room(what, estimate, free_bytes(self.dir), str(self.dir.parent))

    def full_copy_size(self, top: str) -> int | None:
        """The size of the flattened copy full clones of ``top`` are made from, once made."""
        proto = self.cache / f"full-{top.removeprefix('sha256:')}.qcow2"
        return proto.stat().st_size if proto.exists() else None

    def _image(self, src: Path) -> _Image | None:
        """The non-zero pages of a small prototype, read once (None: a large one). Keyed by the
        file's identity, so a prototype dropped and made again is read again."""
        st = os.stat(src)
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._images.get(str(src))
        if cached is not None and cached.key == key:
            return cached
        if st.st_size > SMALL_PROTOTYPE:
            return None
        image = _Image(key, st.st_size, nonzero_runs(src.read_bytes()))
        with self._lock:
            self._images[str(src)] = image
        return image

    def _place(self, src: Path, dest: Path) -> None:
        """Copy ``src`` beside ``dest``, flush it, and rename it over ``dest``."""
        work = dest.with_name(dest.name + ".new")
        image = self._image(src)
        try:
            fd = os.open(work, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
            try:
                if image is not None:
                    os.ftruncate(fd, image.size)
                    for offset, data in image.runs:
                        os.pwrite(fd, data, offset)
                else:
                    _copy_in_kernel(src, fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(work, dest)
        except BaseException:  # a part written to a full disk would hold the space it lacked
            work.unlink(missing_ok=True)
            raise

    # --- volumes --------------------------------------------------------------------------

    def build_system(self, uid: str, kind: str, top: str, virtual_size: int) -> None:
        """(Re)build the system volume on ``top``; the old one is replaced by rename."""
        dest = self.path(uid, SYSTEM_FILE)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if kind == CloneKind.LINKED:
            self._place(self._overlay_prototype(top, virtual_size), dest)
        else:
            self._place(self._full_prototype(top), dest)

    def reset_temp(self, uid: str, outline: Outline) -> None:
        """Replace every temp volume with an empty one of the outline's size."""
        for i, size in enumerate(outline.temp):
            self._place(self._blank_prototype(size), self.path(uid, f"temp{i}.qcow2"))

    def create_data(self, uid: str, outline: Outline) -> None:
        """Make the data volumes that do not exist yet; an existing one is never touched."""
        for i, size in enumerate(outline.data):
            dest = self.path(uid, f"data{i}.qcow2")
            if not dest.exists():
                self._place(self._blank_prototype(size), dest)

    def remove_data(self, uid: str, outline: Outline) -> None:
        """Only on explicit request (``--discard-data``): the data volumes are deleted."""
        for i in range(len(outline.data)):
            self.path(uid, f"data{i}.qcow2").unlink(missing_ok=True)

    def build_clone(
        self, uid: str, kind: str, top: str, virtual_size: int, outline: Outline
    ) -> None:
        """All volumes of a new clone. Safe to run again after an interruption. A folder made
        here is in ``clones/`` for good once :meth:`sync_folders` has run (the caller does that
        once per batch, before the database says the clone is ready)."""
        self.clone_dir(uid).mkdir(parents=True, exist_ok=True)
        with self._lock:  # also when an earlier attempt (a killed server) made the folder
            self._unsynced = True
        self.build_system(uid, kind, top, virtual_size)
        self.reset_temp(uid, outline)
        self.create_data(uid, outline)
        # the renames must survive a power loss before the database says the clone is ready
        fsync_dir(self.clone_dir(uid))

    def sync_folders(self) -> None:
        """Make the clone folders :meth:`build_clone` made durable: one fsync of ``clones/``
        for all of them (each folder's own entries were fsynced by ``build_clone``). A kill -9
        needs none of this (the OS keeps what was written); it is for a power loss, so that a
        row saying ``ready`` never outlives its clone's folder."""
        # held through the fsync: a caller finding nothing left to sync returns only once the
        # fsync that took its folder is over
        with self._sync_lock:
            with self._lock:
                if not self._unsynced:
                    return
                self._unsynced = False
            try:
                fsync_dir(self.dir)
            except BaseException:
                with self._lock:
                    self._unsynced = True
                raise

    def volume_paths(self, uid: str, outline: Outline) -> list[tuple[VolumeRole, int, Path]]:
        return [(role, i, self.path(uid, name)) for role, i, name in outline.volume_files()]

    def verify(self, path: Path | str) -> list[str]:
        """Problems with one clone volume: missing, or what ``qemu-img check`` finds. Leaked
        clusters are not one: a VM that stops abruptly leaves some, and they cost only space."""
        if not os.path.isfile(path):
            return ["missing"]
        try:
            report = self.qemu.check(Path(path), "qcow2")
        except QemuError as exc:
            return [f"qemu-img check: {exc.message}"]
        if report.get("corruptions", 0) or report.get("check-errors", 0):
            return [f"qemu-img check found {report.get('corruptions', 0)} corruptions"]
        return []

    def remove_clone(self, uid: str) -> None:
        shutil.rmtree(self.clone_dir(uid), ignore_errors=True)

    def clone_uids(self) -> set[str]:
        return {e.name for e in os.scandir(self.dir) if e.is_dir()}

    def remove_work_files(self, uid: str) -> None:
        d = self.clone_dir(uid)
        if d.is_dir():
            for entry in os.scandir(d):
                if entry.name.endswith(".new"):
                    os.unlink(entry.path)

    def remove_cache_work_files(self, abandoned: Abandoned) -> list[str]:
        """Prototypes half-made by a server whose work was ``abandoned``
        (``.<key>.<server id>-<random>``)."""
        removed = []
        for entry in os.scandir(self.cache):
            if entry.name.startswith(".") and abandoned(work_owner(entry.name)):
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:  # another starting server removed it
                    continue
                removed.append(f"cache/{entry.name}")
        return removed

    def drop_prototypes(self, top: str) -> None:
        hexdigest = top.removeprefix("sha256:")
        for p in [
            *self.cache.glob(f"overlay-{hexdigest}-*.qcow2"),
            self.cache / f"full-{hexdigest}.qcow2",
        ]:
            p.unlink(missing_ok=True)
