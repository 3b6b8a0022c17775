"""Store health: rehash and check every layer and clone volume, on every core.

Checking a store is one ``qemu-img check`` per file (30,000 for 10,000 clones), each a short
process, plus a sha256 of every layer: work that parallelises perfectly, so it runs on a pool of
as many threads as cores, each waiting on its own qemu-img process or hashing a layer (hashlib
releases the GIL). Layers go first, largest first, so a long hash never ends the run alone.

``since_last``: the files a clean verify vouched for and that did not change since
(store/health.py says what "changed" means) are skipped and counted as such; the rest are
checked. Only a verify that finds no problem is recorded, so a problem is reported again until
it is gone. One verify runs at a time per store.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from goldfleet.context import Context
from goldfleet.db.tables import Clone, Layer, Template
from goldfleet.domain.model import Outline
from goldfleet.errors import Conflict
from goldfleet.services.common import StoreProblem, StoreReport, streams
from goldfleet.store.health import (
    Fingerprint,
    VerifyRecord,
    entry,
    fingerprint,
    load_record,
    save_record,
    settled,
)

_running: set[Path] = set()
_running_guard = threading.Lock()


def verify_workers() -> int:
    """As many checks at once as this process may use cores (as ``nproc`` counts them)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class _File:
    key: str  # the file's path in the store, the record's key
    label: str  # as a problem names it
    path: str
    expected: str  # what it is checked against beyond its bytes (a layer's parent), recorded
    layer: str | None  # the digest, for a layer


def refuse_if_running(ctx: Context) -> None:
    """A second verify of the same store would only halve the speed of both."""
    with _running_guard:
        if ctx.layers.root in _running:
            raise Conflict("a store verify is already running on this server; wait for its report")


@contextmanager
def _one_at_a_time(ctx: Context) -> Iterator[None]:
    root = ctx.layers.root
    with _running_guard:
        if root in _running:
            raise Conflict("a store verify is already running on this server; wait for its report")
        _running.add(root)
    try:
        yield
    finally:
        with _running_guard:
            _running.discard(root)


def _catalog(ctx: Context) -> tuple[list[_File], int, set[str]]:
    """Every file the catalog says the store holds, layers first (largest first), then clone
    volumes by clone name; the number of clones; the digests of the layers. Plain rows and
    string paths: for 10,000 clones, ORM objects and pathlib cost seconds."""
    with ctx.session() as s:
        layers = s.execute(select(Layer.digest, Layer.parent, Layer.size)).all()
        volumes = {
            tid: [name for _role, _i, name in Outline.from_json(outline).volume_files()]
            for tid, outline in s.execute(select(Template.id, Template.outline))
        }
        clones = s.execute(
            select(Clone.name, Clone.uid, Clone.template_id).order_by(Clone.name)
        ).all()
    files = []
    for digest, parent, _size in sorted(layers, key=lambda x: (-x[2], x[0])):
        path = ctx.layers.path(digest)
        key = f"layers/{path.name}"
        files.append(_File(key, key, str(path), parent or "", digest))
    root = str(ctx.volumes.dir)
    for name, uid, template_id in clones:
        for volume in volumes[template_id]:
            key = f"clones/{uid}/{volume}"
            path = os.path.join(root, uid, volume)
            files.append(_File(key, f"{key} (clone {name})", path, "", None))
    return files, len(clones), {d for d, _, _ in layers}


def _check(ctx: Context, f: _File) -> list[StoreProblem]:
    try:
        if f.layer is not None:
            texts = ctx.layers.verify(f.layer, f.expected or None)
            return [StoreProblem(file=f.label, problem=t.partition(": ")[2]) for t in texts]
        return [StoreProblem(file=f.label, problem=t) for t in ctx.volumes.verify(f.path)]
    except OSError as exc:  # unreadable: a problem of this file, not the end of the verify
        return [StoreProblem(file=f.label, problem=f"cannot read it: {exc.strerror or exc}")]


def _check_all(
    ctx: Context,
    files: list[_File],
    workers: int,
    progress: streams.Report | None,
) -> list[list[StoreProblem]]:
    """Each file's problems, in the order of ``files``, checked ``workers`` at a time."""
    results: list[list[StoreProblem]] = [[] for _ in files]
    total = len(files)
    if progress is not None:
        progress(0, total)
    if not files:
        return results
    with ThreadPoolExecutor(
        max_workers=max(1, min(workers, total)), thread_name_prefix="goldfleet-verify"
    ) as pool:
        futures = {pool.submit(_check, ctx, f): i for i, f in enumerate(files)}
        for done, future in enumerate(as_completed(futures), start=1):
            results[futures[future]] = future.result()
            if progress is not None:
                progress(done, total)
    return results


def verify_store(
    ctx: Context,
    *,
    since_last: bool = False,
    workers: int | None = None,
    progress: streams.Report | None = None,
) -> StoreReport:
    """``store verify [--since last]``: every problem with its file; records a clean run."""
    with _one_at_a_time(ctx):
        started = ctx.clock.now()
        t0 = time.monotonic()
        files, clones, digests = _catalog(ctx)
        record = load_record(ctx.layers.root) if since_last else None
        # taken before the stats: a file changed less than RACY_NS before then is not vouched
        # for, since a later change in the same timestamp tick would not move its times
        stat_ns = time.time_ns()
        prints: dict[str, Fingerprint | None] = {f.key: fingerprint(f.path) for f in files}
        if record is None:
            todo = files
        else:
            todo = [f for f in files if not record.vouches(f.key, prints[f.key], f.expected)]
        results = _check_all(ctx, todo, workers or verify_workers(), progress)
        found = list(zip(todo, results, strict=True))
        problems = [p for f, ps in found if f.layer is not None for p in ps]
        for digest in sorted(ctx.layers.sealed_digests() - digests):
            problems.append(
                StoreProblem(
                    file=f"layers/{ctx.layers.path(digest).name}",
                    problem="not in the catalog (left over)",
                )
            )
        problems += [p for f, ps in found if f.layer is None for p in ps]
        skipped = len(files) - len(todo)
        full_at = record.full_at if record is not None else None
        if not problems:
            full_at = started if not skipped else full_at
            save_record(
                ctx.layers.root,
                VerifyRecord(
                    at=started,
                    full_at=full_at or started,
                    files={
                        f.key: entry(fp, f.expected)
                        for f in files
                        if (fp := prints[f.key]) is not None and settled(fp, stat_ns)
                    },
                ),
            )
        return StoreReport(
            layers=len(digests),
            clones_checked=clones,
            problems=problems,
            files_checked=len(todo),
            files_skipped=skipped,
            since=record.at if record is not None else None,
            full_verify_at=full_at,
            seconds=round(time.monotonic() - t0, 3),
        )


def stream_verify(ctx: Context, *, since_last: bool = False) -> Iterator[bytes]:
    """The verify as JSON lines (services/streams.py): ``progress`` in files checked of those
    to check, then ``done`` with the report."""

    def work(report: streams.Report) -> StoreReport:
        return verify_store(ctx, since_last=since_last, progress=report)

    start = {"action": "store verify", "since": "last" if since_last else None}
    return streams.stream(start, work, what="store verify")
