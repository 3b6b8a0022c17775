"""Store health: rehash and check every layer and clone volume."""

from __future__ import annotations

from sqlalchemy import select

from goldfleet.context import Context
from goldfleet.db.tables import Clone, Layer
from goldfleet.services.common import StoreProblem, StoreReport, outline_of
from goldfleet.store.qemu import QemuError


def verify_store(ctx: Context) -> StoreReport:
    problems: list[StoreProblem] = []
    with ctx.session() as s:
        layers = [(layer.digest, layer.parent) for layer in s.scalars(select(Layer))]
        clones = [(c.name, c.uid, outline_of(c.template)) for c in s.scalars(select(Clone))]
    for digest, parent in layers:
        for text in ctx.layers.verify(digest, parent):
            file, _, problem = text.partition(": ")
            problems.append(StoreProblem(file=f"layers/{file}", problem=problem))
    known = {d for d, _ in layers}
    for digest in sorted(ctx.layers.sealed_digests() - known):
        problems.append(
            StoreProblem(
                file=f"layers/{ctx.layers.path(digest).name}",
                problem="not in the catalog (left over)",
            )
        )
    for name, uid, outline in clones:
        for _role, _i, path in ctx.volumes.volume_paths(uid, outline):
            rel = f"clones/{uid}/{path.name} (clone {name})"
            if not path.exists():
                problems.append(StoreProblem(file=rel, problem="missing"))
                continue
            try:
                report = ctx.qemu.check(path, "qcow2")
            except QemuError as exc:
                problems.append(StoreProblem(file=rel, problem=f"qemu-img check: {exc.message}"))
                continue
            if report.get("corruptions", 0) or report.get("check-errors", 0):
                problems.append(
                    StoreProblem(
                        file=rel,
                        problem=f"qemu-img check found {report.get('corruptions', 0)} corruptions",
                    )
                )
    return StoreReport(layers=len(layers), clones_checked=len(clones), problems=problems)
