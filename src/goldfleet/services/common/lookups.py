"""Lookups and views shared by the service modules."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from goldfleet.db.tables import Clone, Layer, Operation, OperationItem, Template, Version
from goldfleet.domain.model import Outline
from goldfleet.domain.names import check_name
from goldfleet.errors import NotFound
from goldfleet.services.common.views import OperationView, TemplateView, VersionView, WaitingClone


def get_template(s: Session, name: str) -> Template:
    check_name(name, "template name")
    t = s.scalar(select(Template).where(Template.name == name))
    if t is None:
        raise NotFound(f"template {name} does not exist; see: goldfleet template list")
    return t


def get_version(s: Session, t: Template, number: int | None) -> Version:
    """A version of ``t`` by number, or its current version for None."""
    if number is None:
        if t.current_version is None:
            raise NotFound(f"template {t.name} has no current version")
        return t.current_version
    v = s.scalar(select(Version).where(Version.template_id == t.id, Version.number == number))
    if v is None:
        raise NotFound(
            f"template {t.name} has no version v{number}; see: goldfleet template versions {t.name}"
        )
    return v


def get_clone(s: Session, name: str) -> Clone:
    check_name(name, "clone name")
    c = s.scalar(select(Clone).where(Clone.name == name))
    if c is None:
        raise NotFound(f"clone {name} does not exist; see: goldfleet clone list")
    return c


def get_operation(s: Session, op_id: int) -> Operation:
    op = s.get(Operation, op_id)
    if op is None:
        raise NotFound(f"operation {op_id} does not exist; see: goldfleet op list")
    return op


def chain(s: Session, top: str) -> list[Layer]:
    """The layers of a chain, top first."""
    layers = []
    digest: str | None = top
    while digest is not None:
        layer = s.get(Layer, digest)
        if layer is None:
            raise NotFound(f"layer {digest} is not in the catalog")
        layers.append(layer)
        digest = layer.parent
    return layers


def outline_of(t: Template) -> Outline:
    return Outline.from_json(t.outline)


def template_views(s: Session) -> list[TemplateView]:
    """:func:`template_view` of every template, in name order, in three queries (not a few per
    template): the templates with their current version, its layer and their number of
    versions in one, the clones and the clones behind counted grouped. 200 templates of a
    10,000-clone fleet: one list in a few milliseconds."""
    current = aliased(Version)
    versions = (
        select(Version.template_id, func.count().label("n"))
        .group_by(Version.template_id)
        .subquery()
    )
    rows = s.execute(
        select(
            Template.id,
            Template.name,
            Template.status,
            Template.kind,
            Template.outline,
            Template.error,
            Template.created_at,
            current.number,
            Layer.virtual_size,
            versions.c.n,
        )
        .outerjoin(current, current.id == Template.current_version_id)
        .outerjoin(Layer, Layer.digest == current.top_layer)
        .outerjoin(versions, versions.c.template_id == Template.id)
        .order_by(Template.name)
    ).all()
    counts = dict(
        s.execute(select(Clone.template_id, func.count()).group_by(Clone.template_id)).all()
    )
    behind = dict(
        s.execute(
            select(Clone.template_id, func.count())
            .join(Template, Clone.template_id == Template.id)
            .where(Clone.version_id != Template.current_version_id)
            .group_by(Clone.template_id)
        ).all()
    )
    views = []
    for tid, name, status, kind, outline, error, created_at, number, size, n in rows:
        shape = Outline.from_json(outline)
        views.append(
            TemplateView(
                name=name,
                status=status,
                kind=kind,
                temp=list(shape.temp),
                data=list(shape.data),
                system_size=size if number is not None else None,
                current_version=number,
                versions=n or 0,
                clones=counts.get(tid, 0),
                clones_behind=behind.get(tid, 0) if number is not None else 0,
                overlay_path=None,
                error=error,
                created_at=created_at,
            )
        )
    return views


def template_view(s: Session, t: Template, overlay_path: str | None = None) -> TemplateView:
    current = t.current_version
    clones = s.scalar(select(func.count()).where(Clone.template_id == t.id)) or 0
    behind = 0
    if current is not None:
        behind = (
            s.scalar(
                select(func.count()).where(
                    Clone.template_id == t.id, Clone.version_id != current.id
                )
            )
            or 0
        )
    outline = outline_of(t)
    return TemplateView(
        name=t.name,
        status=t.status,
        kind=t.kind,
        temp=list(outline.temp),
        data=list(outline.data),
        system_size=current.layer.virtual_size if current else None,
        current_version=current.number if current else None,
        versions=len(t.versions),
        clones=clones,
        clones_behind=behind,
        overlay_path=overlay_path,
        error=t.error,
        created_at=t.created_at,
    )


def version_view(s: Session, t: Template, v: Version) -> VersionView:
    clones = s.scalar(select(func.count()).where(Clone.version_id == v.id)) or 0
    return VersionView(
        number=v.number,
        name=f"v{v.number}",
        top_layer=v.top_layer,
        chain=[layer.digest for layer in chain(s, v.top_layer)],
        current=t.current_version_id == v.id,
        clones=clones,
        note=v.note,
        guest_tool_version=v.guest_tool_version,
        quarantine_version=v.quarantine_version,
        created_at=v.created_at,
        status=v.status,
    )


def operation_view(op: Operation, s: Session | None = None, *, detail: int = 50) -> OperationView:
    """The operation with its item counts, the clones in work and why queued ones wait."""
    extra: dict = {}
    if s is not None:
        counts = dict(
            s.execute(
                select(OperationItem.state, func.count())
                .where(OperationItem.operation_id == op.id)
                .group_by(OperationItem.state)
            ).all()
        )
        extra = {k: counts.get(k, 0) for k in ("queued", "running", "skipped", "cancelled")}
        extra["current"] = list(
            s.scalars(
                select(OperationItem.clone_name)
                .where(OperationItem.operation_id == op.id, OperationItem.state == "running")
                .limit(detail)
            )
        )
        extra["waiting"] = [
            WaitingClone(clone=name, reason=reason)
            for name, reason in s.execute(
                select(OperationItem.clone_name, OperationItem.reason)
                .where(
                    OperationItem.operation_id == op.id,
                    OperationItem.state == "queued",
                    OperationItem.reason.is_not(None),
                )
                .limit(detail)
            )
        ]
    return OperationView(
        **extra,
        start_at=op.start_at,
        paused_reason=op.paused_reason,
        policy=op.policy or {},
        id=op.id,
        kind=op.kind,
        target=op.target,
        status=op.status,
        total=op.total,
        done=op.done,
        failed=op.failed,
        error=op.error,
        actor=op.actor,
        created_at=op.created_at,
        finished_at=op.finished_at,
    )
