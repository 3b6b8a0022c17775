"""Edge stores: each host's local copy of the layers its linked clones read (docs/edge.md).

Host H's edge store is the folder ``edge_root/H``, which is H's own disk as this server reaches
it (a mount), at the same path on H itself. Inside it is a layer store like the site's: layers
named by digest under ``layers/``, each backed by its parent's file name in the same folder, so
a chain copied there is complete on its own and a VM on H reads only H's disk.

A layer is copied from the site store into a dot-named work file while it is hashed; it must
hash to its digest, reference exactly its parent's file name and pass ``qemu-img check`` under
limits before it is renamed to its digest and made read-only (0444), as a layer arriving from
another site is. A failure removes the work file; the layers committed before it stay, each
whole and verified. A layer file already there (left by an earlier run, or seeded from a USB
disk) is used only once its bytes hash to its name (hashed once per file and server, then known
by its size, time and inode: a ``stat``); one that does not match is moved aside into the host's
``rejected/`` folder and copied again.

A prune removes the layers no clone needs any more, children before parents, under the same
per-host lock as copies, so a copy and a prune into one host never interleave.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from goldfleet.domain.edge import Keep, missing_layers, removable_layers
from goldfleet.domain.names import digest_of_filename, layer_filename
from goldfleet.errors import BadImage, Conflict, StoreError
from goldfleet.store.files import fsync_dir, move_aside, signature
from goldfleet.store.layers import LayerInfo, LayerStore, file_digest
from goldfleet.store.qemu import Limits, QemuError, QemuImg

CHUNK = 1 << 20
WORK_PREFIX = ".edge-"
STALE_WORK_SECONDS = 3600.0  # a work file untouched this long was left by a killed copy

Progress = Callable[[int], None]  # told the bytes just copied

log = logging.getLogger("goldfleet.edge")


class EdgeStores:
    """Every host's edge store under ``root``, with a per-host lock (one copy at a time into a
    host from this server) and a cache of the chains known to be complete on each host, so a
    rollout over thousands of clones does not look at every layer file once per clone."""

    def __init__(self, root: Path, qemu: QemuImg, limits: Limits | None = None) -> None:
        self.root = root
        self.qemu = qemu
        self.limits = limits or Limits()
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._complete: set[tuple[str, str]] = set()  # (host, top layer)
        self._pruning: set[str] = set()  # hosts being pruned: their chains are not cached
        # layer files on hosts whose bytes this server hashed to their digest: signature
        self._checked: dict[tuple[str, str], tuple[int, int, int]] = {}
        self.rejected: list[tuple[str, str]] = []  # (host, digest) moved aside, newest last
        self.resumed: dict[tuple[str, str], int] = {}  # (host, digest) -> bytes resumed from

    # --- where ----------------------------------------------------------------------------

    def folder(self, host: str) -> Path:
        """The host's edge store; ``host`` must be a checked name (domain.edge.check_host)."""
        return self.root / host

    def store(self, host: str) -> LayerStore:
        return LayerStore(self.folder(host), self.qemu, self.limits)

    def path(self, host: str, digest: str) -> Path:
        return self.folder(host) / "layers" / layer_filename(digest)

    def backing(self, host: str, chain: Sequence[str]) -> tuple[str, ...]:
        """The chain (top first) as the host's own copies, for a VM's declared backing chain."""
        return tuple(str(self.path(host, digest)) for digest in chain)

    def reachable(self, host: str) -> bool:
        return self.folder(host).is_dir()

    def check_reachable(self, host: str) -> None:
        if not self.reachable(host):
            raise Conflict(
                f"the edge store of host {host} is not reachable: {self.folder(host)} does not"
                " exist; mount the host's local disk there (docs/edge.md)"
            )

    def _lock(self, host: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(host, threading.Lock())

    # --- what is there --------------------------------------------------------------------

    def present(self, host: str, digest: str) -> bool:
        """Is the layer on the host, its bytes hashing to its digest? A file this server has
        not checked yet (seeded by hand, left from an earlier run) is hashed first; a changed
        file (another size, time or inode) again. One that does not match is moved aside into
        ``edge_root/HOST/rejected/`` and counts as missing, so that it is copied again."""
        path = self.path(host, digest)
        sig = signature(path)
        if sig is None:
            return False
        if self._checked.get((host, digest)) == sig:
            return True
        if file_digest(path) == digest:
            if stat.S_IMODE(os.stat(path).st_mode) != 0o444:
                os.chmod(path, 0o444)
            self._checked[(host, digest)] = signature(path) or sig
            return True
        self._checked.pop((host, digest), None)
        dest = move_aside(path, self.folder(host) / "rejected")
        self.rejected.append((host, digest))
        log.warning(
            "edge store of host %s: %s does not hash to its name; moved to %s",
            host,
            path.name,
            dest,
        )
        return False

    def unchanged(self, host: str, digest: str) -> bool:
        """The layer's file is the one this server checked (one ``stat``)."""
        sig = self._checked.get((host, digest))
        return sig is not None and signature(self.path(host, digest)) == sig

    def missing(self, host: str, chain: Sequence[str]) -> list[str]:
        """The layers of ``chain`` (top first) the host lacks, parents first; looks at files,
        and hashes those not checked yet (:meth:`present`)."""
        present = {d for d in chain if self.present(host, d)}
        missing = missing_layers(chain, present)
        key = (host, chain[0]) if chain else None
        if key is not None:
            if missing or host in self._pruning:
                self._complete.discard(key)
            else:
                self._complete.add(key)
        return missing

    def is_complete(self, host: str, chain: Sequence[str]) -> bool:
        """Is every layer of ``chain`` on the host? Answered from the cache once known, and
        the top layer's file still there (one ``stat``: a prune, by any server, removes a
        chain's children before its parents, so a top layer present means a whole chain);
        "no" while this server prunes the host, so that its caller waits in ``ensure``."""
        if not chain:
            return True
        if host in self._pruning:
            return False
        if (host, chain[0]) in self._complete and self.unchanged(host, chain[0]):
            return True
        return not self.missing(host, chain)

    def held(self, host: str) -> dict[str, int]:
        """The sealed layers on the host: digest → bytes."""
        folder = self.folder(host) / "layers"
        if not folder.is_dir():
            return {}
        held = {}
        for entry in os.scandir(folder):
            digest = digest_of_filename(entry.name)
            if digest is not None and entry.is_file(follow_symlinks=False):
                held[digest] = entry.stat(follow_symlinks=False).st_size
        return held

    # --- copying --------------------------------------------------------------------------

    def ensure(
        self,
        host: str,
        chain: Sequence[str],
        source: LayerStore,
        progress: Progress | None = None,
    ) -> list[LayerInfo]:
        """Make the chain (top first) complete on the host; returns the layers copied."""
        if self.is_complete(host, chain):
            return []
        with self._lock(host):
            self.check_reachable(host)
            store = self.store(host)
            parents = {
                d: (chain[i + 1] if i + 1 < len(chain) else None) for i, d in enumerate(chain)
            }
            copied: list[LayerInfo] = []
            try:
                store.dir.mkdir(exist_ok=True)
                self._remove_stale_work(store.dir)
                for digest in self.missing(host, chain):
                    copied.append(
                        self.copy_layer(
                            host, source.path(digest), digest, parents[digest], progress
                        )
                    )
            except OSError as exc:  # the host's disk: full, read-only, gone, not a folder…
                done = f"; the {len(copied)} layer(s) copied before stay" if copied else ""
                why = "its disk is full" if exc.errno == errno.ENOSPC else exc.strerror or exc
                raise StoreError(
                    f"the edge store of host {host} cannot take layers: {why}"
                    f" ({exc.filename or self.folder(host)}){done}"
                ) from None
            self._complete.add((host, chain[0]))
            return copied

    def copy_layer(
        self,
        host: str,
        src: Path,
        digest: str,
        parent: str | None,
        progress: Progress | None = None,
        *,
        resume: bool = False,
        limit: float | None = None,
    ) -> LayerInfo:
        """Copy one layer of the site store into the host's edge store, checked like a layer
        from another site. The parent must already be there (qemu-img check opens it).

        ``resume``: the work file is named by the digest and kept when the copy is
        interrupted, so the next copy of that layer goes on from its end (its bytes are hashed
        again, read from the host, not copied again); one that turns out wrong is removed.
        ``limit``: bytes a second at most, on average."""
        store = self.store(host)
        where = f"edge store of host {host}: layer {digest}"
        if parent is not None and not store.has(parent):
            raise Conflict(f"{where} needs its parent {parent} there first; copy parents first")
        if not src.is_file():
            raise StoreError(
                f"{where} cannot be copied: the site store lacks it ({src}); run: goldfleet"
                " store verify"
            )
        name = f"feed-{digest.removeprefix('sha256:')}" if resume else secrets.token_hex(8)
        work = store.dir / f"{WORK_PREFIX}{name}.qcow2"
        keep = False  # an interrupted resumable copy keeps its work file
        try:
            h = hashlib.sha256()
            start = 0
            if resume and work.is_file():
                with work.open("rb") as partial:
                    while block := partial.read(CHUNK):
                        h.update(block)
                        start += len(block)
                self.resumed[(host, digest)] = start
            started, sent = time.monotonic(), 0
            with src.open("rb") as fsrc, work.open("ab" if resume else "xb") as fdst:
                fsrc.seek(start)
                keep = resume
                while block := fsrc.read(CHUNK):
                    h.update(block)
                    fdst.write(block)
                    sent += len(block)
                    if progress is not None:
                        progress(len(block))
                    if limit:
                        ahead = sent / limit - (time.monotonic() - started)
                        if ahead > 0:
                            fdst.flush()
                            time.sleep(ahead)
            keep = False
            got = "sha256:" + h.hexdigest()
            if got != digest:
                raise BadImage(
                    f"{where} refused: the site store's copy hashes to {got}, not its digest (a"
                    " changed or damaged file); nothing was committed. Check the site store:"
                    " goldfleet store verify"
                )
            self._check_reference(work, where, parent)
            try:
                info = store.check_and_hash(work, parent=parent)
            except BadImage as exc:
                raise BadImage(f"{where} refused: {exc.message}") from None
            if info.digest != digest:
                raise BadImage(f"{where} refused: its bytes changed while it was checked")
            store.commit_work(work, info)
            sig = signature(self.path(host, digest))
            if sig is not None:
                self._checked[(host, digest)] = sig
            return info
        finally:
            if not keep:
                work.unlink(missing_ok=True)

    def feed_layer(
        self,
        host: str,
        src: Path,
        digest: str,
        parent: str | None,
        progress: Progress | None = None,
        *,
        limit: float | None = None,
    ) -> LayerInfo | None:
        """One layer of a background feed (:meth:`copy_layer` resumable and rate-limited),
        under the host's lock; None when the host holds it already (checked)."""
        with self._lock(host):
            self.check_reachable(host)
            self.store(host).dir.mkdir(exist_ok=True)
            if self.present(host, digest):
                return None
            return self.copy_layer(host, src, digest, parent, progress, resume=True, limit=limit)

    def _check_reference(self, work: Path, where: str, parent: str | None) -> None:
        """Refuse any backing reference but the parent's file name, before qemu-img check
        would open the file it names."""
        try:
            info = self.qemu.info(work, "qcow2", limits=self.limits)
        except QemuError as exc:
            raise BadImage(f"{where} refused: not a readable qcow2 image: {exc.message}") from None
        expected = layer_filename(parent) if parent else None
        backing = info.get("backing-filename")
        if backing != expected or (expected and info.get("backing-filename-format") != "qcow2"):
            raise BadImage(
                f"{where} refused: its backing reference is {backing!r}, expected {expected!r}"
                " (its parent's file name)"
            )

    # --- pruning --------------------------------------------------------------------------

    def prune(
        self, host: str, keep: Callable[[], Keep], *, dry_run: bool = False
    ) -> list[tuple[str, int]]:
        """Remove the host's layers that ``keep`` does not name, children before parents;
        returns the layers removed (or, with ``dry_run``, that would be) and their bytes.

        ``keep`` is asked once the host's lock is held, so a clone claimed for this host
        before then keeps its chain, and one claimed after waits in ``ensure`` and copies back
        whatever it needs. Work files of live copies are never touched; stale ones go."""
        with self._lock(host):
            self.check_reachable(host)
            if not dry_run:
                self._pruning.add(host)
                self._forget(host)
            try:
                wanted = keep()
                held = self.held(host)
                remove = removable_layers(held, wanted)
                assert not {wanted.parents.get(d) for d in wanted.layers} & set(remove), (
                    f"a prune of host {host} would remove a kept layer's parent"
                )
                if dry_run:
                    return [(digest, held[digest]) for digest in remove]
                folder = self.folder(host) / "layers"
                if folder.is_dir():
                    self._remove_stale_work(folder)
                removed = []
                for digest in remove:
                    try:
                        self.path(host, digest).unlink()  # 0444 in a folder we own: allowed
                    except FileNotFoundError:
                        continue  # another server pruned it
                    removed.append((digest, held[digest]))
                if removed:
                    fsync_dir(folder)
                return removed
            finally:
                if not dry_run:
                    self._forget(host)  # chains looked at during the prune
                    self._pruning.discard(host)

    def _forget(self, host: str) -> None:
        """Drop the host's cached complete chains (a copy of the set: others add to it)."""
        for key in list(self._complete):
            if key[0] == host:
                self._complete.discard(key)

    @staticmethod
    def _remove_stale_work(folder: Path) -> None:
        """Work files of a copy killed mid-way (another server's live copy is never this old:
        it writes as it goes, and its check is bounded by the inspection limits)."""
        now = time.time()
        for entry in os.scandir(folder):
            if entry.name.startswith(WORK_PREFIX):
                try:
                    if now - entry.stat(follow_symlinks=False).st_mtime > STALE_WORK_SECONDS:
                        os.unlink(entry.path)
                except FileNotFoundError:
                    continue
