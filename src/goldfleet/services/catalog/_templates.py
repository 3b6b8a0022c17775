"""Templates, their versions and maintenance mode."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from goldfleet import crashpoints, guest
from goldfleet.context import Context
from goldfleet.db.tables import (
    Clone,
    Layer,
    OperationItem,
    Pool,
    QuarantinePolicy,
    Template,
    Version,
)
from goldfleet.domain import quarantine, rules
from goldfleet.domain.model import (
    CloneKind,
    Outline,
    RecreateScope,
    TemplateStatus,
    VersionStatus,
)
from goldfleet.domain.names import check_name
from goldfleet.domain.rollout import Policy
from goldfleet.domain.sizes import parse_size
from goldfleet.drivers.base import DiskSpec, DomainSpec
from goldfleet.errors import Conflict, GoldfleetError, InvalidInput, StoreError
from goldfleet.services import fleet, rollouts
from goldfleet.services.common import (
    MaintenanceExitView,
    TemplateView,
    VersionView,
    audit,
    chain,
    get_clone,
    get_template,
    get_version,
    template_view,
    template_views,
    version_view,
)
from goldfleet.store.files import Abandoned
from goldfleet.store.layers import LayerInfo

# --- helpers ------------------------------------------------------------------------------


def add_layer(s: Session, info: LayerInfo) -> Layer:
    layer = s.get(Layer, info.digest)
    if layer is None:
        depth = 1 if info.parent is None else s.get(Layer, info.parent).depth + 1
        layer = Layer(
            digest=info.digest,
            parent=info.parent,
            size=info.size,
            virtual_size=info.virtual_size,
            depth=depth,
        )
        s.add(layer)
        s.flush()
    return layer


def _add_version(
    s: Session, t: Template, top: str, note: str, *, status: str = VersionStatus.ENABLED
) -> Version:
    """The next version of ``t``; current at once unless it waits for validation."""
    number = rules.next_version_number(v.number for v in t.versions)
    v = Version(template_id=t.id, number=number, top_layer=top, note=note, status=status)
    s.add(v)
    s.flush()
    if status == VersionStatus.ENABLED:
        t.current_version_id = v.id
        t.current_version = v
    s.flush()
    s.refresh(t)
    return v


def _maybe_flatten(ctx: Context, s: Session, info: LayerInfo) -> tuple[LayerInfo, str]:
    """Past the configured chain depth, a new top is merged into a new base layer."""
    layer = add_layer(s, info)
    if not rules.needs_flatten(layer.depth, ctx.settings.max_chain_depth):
        return info, ""
    flat = ctx.layers.flatten(info.digest)
    return flat, f" (chain of {layer.depth} layers flattened into one)"


def used_layers(s: Session) -> set[str]:
    """Every layer some version's chain needs."""
    parents = {digest: parent for digest, parent in s.execute(select(Layer.digest, Layer.parent))}
    return rules.layers_of_chains(s.scalars(select(Version.top_layer)), parents)


def _release_layers(ctx: Context, s: Session) -> list[str]:
    """Delete catalog rows of layers no version needs; return their digests (files go later)."""
    used = used_layers(s)
    unused = [layer for layer in s.scalars(select(Layer)) if layer.digest not in used]
    # children first, so a parent row is never removed before its child
    unused.sort(key=lambda layer: -layer.depth)
    for layer in unused:
        s.delete(layer)
        s.flush()
    return [layer.digest for layer in unused]


def _remove_layer_files(ctx: Context, digests: list[str]) -> None:
    for digest in digests:
        ctx.layers.remove(digest)
        ctx.volumes.drop_prototypes(digest)


def _parse_outline(temp: list[str | int], data: list[str | int], max_size: int) -> Outline:
    return rules.check_outline(
        Outline(
            temp=tuple(parse_size(x, maximum=max_size) for x in temp),
            data=tuple(parse_size(x, maximum=max_size) for x in data),
        )
    )


def check_new_name(ctx: Context, name: str) -> None:
    """Refuse a template name that is invalid or taken, before an upload is received."""
    check_name(name, "template name")
    with ctx.session() as s:
        _check_name_free(s, name)


def _check_name_free(s: Session, name: str) -> None:
    if s.scalar(select(Template.id).where(Template.name == name)) is not None:
        raise Conflict(f"template {name} already exists; choose another name")


# --- reading ------------------------------------------------------------------------------


def list_templates(ctx: Context) -> list[TemplateView]:
    with ctx.session() as s:
        return template_views(s)


def show_template(ctx: Context, name: str) -> TemplateView:
    with ctx.session() as s:
        t = get_template(s, name)
        overlay = str(ctx.layers.dir / t.overlay) if t.overlay else None
        return template_view(s, t, overlay_path=overlay)


def layer_sizes(ctx: Context, digests: list[str]) -> dict[str, int]:
    """The stored size in bytes of each of ``digests`` the catalog holds."""
    with ctx.session() as s:
        return dict(
            s.execute(select(Layer.digest, Layer.size).where(Layer.digest.in_(set(digests)))).all()
        )


def list_versions(ctx: Context, name: str) -> list[VersionView]:
    with ctx.session() as s:
        t = get_template(s, name)
        return [version_view(s, t, v) for v in t.versions]


# --- making templates ---------------------------------------------------------------------


def import_template(
    ctx: Context,
    *,
    name: str,
    image: Path,
    fmt: str = "qcow2",
    temp: list[str | int] | None = None,
    data: list[str | int] | None = None,
    kind: str = "linked",
    actor: str,
) -> TemplateView:
    """Import an outside image as v1 of a new template (a standalone base layer)."""
    check_name(name, "template name")
    if kind not in (CloneKind.LINKED, CloneKind.FULL):
        raise InvalidInput(f"clone kind {kind!r} is not valid: use linked or full")
    outline = _parse_outline(temp or [], data or [], ctx.settings.max_virtual_size)
    with ctx.session() as s:
        _check_name_free(s, name)
    info = ctx.layers.import_image(image, fmt, max_virtual_size=ctx.settings.max_virtual_size)
    crashpoints.reached("template-import.sealed")
    with ctx.session() as s:
        try:
            _check_name_free(s, name)
            add_layer(s, info)
            t = Template(name=name, kind=kind, outline=outline.to_json())
            s.add(t)
            s.flush()
            _add_version(s, t, info.digest, f"imported ({fmt})")
            audit.record(s, actor, "template.import", name, layer=info.digest, format=fmt)
            s.commit()
        except (IntegrityError, Conflict):
            s.rollback()
            if info.digest not in used_layers(s):
                ctx.layers.remove(info.digest)
            raise Conflict(f"template {name} already exists; choose another name") from None
        return template_view(s, t)


def create_from_clone(ctx: Context, *, name: str, clone: str, actor: str) -> TemplateView:
    """Seal a clone's system volume as v1 of a new template, sharing the lower layers."""
    check_name(name, "template name")
    with ctx.session() as s:
        _check_name_free(s, name)
        c = get_clone(s, clone)
        rules.check_clone_usable(c.name, c.status)
        source = c.template
        parent = c.version.top_layer
        uid, kind, outline = c.uid, c.kind, dict(source.outline)
        note = f"from clone {c.name} ({source.name}:v{c.version.number})"
    with fleet.stopped(ctx, clone):
        system = ctx.volumes.path(uid, "system.qcow2")
        if kind == CloneKind.LINKED:
            info = ctx.layers.seal_copy(system, parent=parent)
        else:
            info = ctx.layers.seal_standalone_copy(system)
    crashpoints.reached("template-from-clone.sealed")
    with ctx.session() as s:
        _check_name_free(s, name)
        info, flattened = _maybe_flatten(ctx, s, info)
        add_layer(s, info)
        t = Template(name=name, kind=kind, outline=outline)
        s.add(t)
        s.flush()
        _add_version(s, t, info.digest, note + flattened)
        audit.record(s, actor, "template.create-from-clone", name, clone=clone, layer=info.digest)
        s.commit()
        return template_view(s, t)


def flatten_template(ctx: Context, name: str, *, actor: str) -> VersionView:
    """Merge the current version's chain into a new base layer, as a new version."""
    with ctx.template_lock(name), ctx.session() as s:
        t = get_template(s, name)
        rules.check_can_change_template(t.name, t.status, "flatten")
        current = get_version(s, t, None)
        depth = s.get(Layer, current.top_layer).depth
        if depth == 1:
            raise Conflict(f"template {name}: v{current.number} is a single base layer already")
        flat = ctx.layers.flatten(current.top_layer)
        crashpoints.reached("template-flatten.flattened")
        add_layer(s, flat)
        v = _add_version(
            s, t, flat.digest, f"v{current.number} flattened ({depth} layers into one)"
        )
        audit.record(s, actor, "template.flatten", name, version=v.number, layer=flat.digest)
        s.commit()
        return version_view(s, t, v)


# --- deleting -----------------------------------------------------------------------------


def _template_dependents(s: Session, t: Template) -> list[str]:
    """Clones of ``t``, and templates standing on a layer ``t`` introduced.

    A layer belongs to the oldest template whose chains hold it; a template made from another
    one's clone shares the older layers without owning them, so it can be deleted on its own."""
    found = [f"clone {n}" for n in s.scalars(select(Clone.name).where(Clone.template_id == t.id))]
    found += [f"pool {n}" for n in s.scalars(select(Pool.name).where(Pool.template_id == t.id))]

    def layers_of(template: Template) -> set[str]:
        return {x.digest for v in template.versions for x in chain(s, v.top_layer)}

    others = list(s.scalars(select(Template).where(Template.id != t.id).order_by(Template.id)))
    older = set().union(*(layers_of(o) for o in others if o.id < t.id))
    introduced = layers_of(t) - older
    for other in others:
        for v in other.versions:
            if any(layer.digest in introduced for layer in chain(s, v.top_layer)):
                found.append(f"template {other.name} (v{v.number})")
                break
    return found


def delete_template(ctx: Context, name: str, *, actor: str) -> None:
    with ctx.template_lock(name), ctx.session() as s:
        t = get_template(s, name)
        rules.check_can_change_template(t.name, t.status, "delete")
        rules.check_no_dependents(f"template {name}", _template_dependents(s, t))
        t.current_version_id = None
        s.flush()
        for v in list(t.versions):
            s.delete(v)
        s.flush()
        s.delete(t)
        s.flush()
        freed = _release_layers(ctx, s)
        audit.record(s, actor, "template.delete", name, layers_removed=len(freed))
        s.commit()
    crashpoints.reached("template-delete.committed")
    _remove_layer_files(ctx, freed)


def delete_version(ctx: Context, name: str, number: int, *, actor: str) -> None:
    with ctx.template_lock(name), ctx.session() as s:
        t = get_template(s, name)
        rules.check_can_change_template(t.name, t.status, "delete a version of")
        v = get_version(s, t, number)
        if t.current_version_id == v.id:
            raise Conflict(
                f"v{number} is the current version of template {name}; make a newer version first"
            )
        users = s.scalars(
            select(Clone.name).where((Clone.version_id == v.id) | (Clone.target_version_id == v.id))
        )
        queued = s.scalars(
            select(OperationItem.clone_name).where(
                OperationItem.target_version_id == v.id,
                OperationItem.state.in_(["queued", "running"]),
            )
        )
        rules.check_no_dependents(
            f"version {name}:v{number}",
            [f"clone {n}" for n in users] + [f"clone {n} (queued in an operation)" for n in queued],
        )
        s.delete(v)
        s.flush()
        freed = _release_layers(ctx, s)
        audit.record(s, actor, "version.delete", f"{name}:v{number}", layers_removed=len(freed))
        s.commit()
    crashpoints.reached("version-delete.committed")
    _remove_layer_files(ctx, freed)


# --- maintenance --------------------------------------------------------------------------


def enter_maintenance(ctx: Context, name: str, *, actor: str) -> TemplateView:
    """Give the template a writable overlay on its current version."""
    ctx.check_template_change(check_name(name, "template name"))
    with ctx.template_lock(name):
        with ctx.session() as s:
            t = get_template(s, name)
            rules.check_can_enter_maintenance(t.name, t.status)
            parent = get_version(s, t, None).top_layer
            overlay = f".overlay-{secrets.token_hex(8)}.qcow2"
            t.status = TemplateStatus.ENTERING_MAINTENANCE
            t.overlay = overlay
            t.error = None
            t.owner = ctx.server_id
            s.commit()
        crashpoints.reached("maintenance-enter.requested")
        try:
            ctx.layers.create_overlay(parent, overlay)
        except GoldfleetError as exc:
            with ctx.session() as s:
                t = get_template(s, name)
                t.status, t.overlay, t.error, t.owner = (
                    TemplateStatus.READY,
                    None,
                    exc.message,
                    None,
                )
                s.commit()
            raise
        crashpoints.reached("maintenance-enter.overlay-made")
        with ctx.session() as s:
            t = get_template(s, name)
            t.status, t.owner = TemplateStatus.MAINTENANCE, None
            audit.record(s, actor, "template.maintenance.enter", name)
            s.commit()
            return template_view(s, t, overlay_path=str(ctx.layers.dir / overlay))


MAINTENANCE_VM_PREFIX = "maintenance."


def start_maintenance_vm(ctx: Context, name: str, *, actor: str) -> TemplateView:
    """Boot the maintenance overlay as a VM (RAS: start the template as a normal VM)."""
    with ctx.template_lock(name), ctx.session() as s:
        t = get_template(s, name)
        rules.check_in_maintenance(t.name, t.status)
        vm = f"{MAINTENANCE_VM_PREFIX}{t.id}"
        backing = tuple(
            str(ctx.layers.path(layer.digest))
            for layer in chain(s, get_version(s, t, None).top_layer)
        )
        spec = DomainSpec(
            name=vm,
            disks=(DiskSpec(role="system", path=str(ctx.layers.dir / t.overlay), backing=backing),),
        )
        fleet.call_driver(ctx, ctx.driver.define, spec=spec, host=None)
        fleet.call_driver(ctx, ctx.driver.start, name=vm)
        t.maintenance_vm = vm
        audit.record(s, actor, "template.maintenance.start", name, vm=vm)
        s.commit()
        return template_view(s, t, overlay_path=str(ctx.layers.dir / t.overlay))


def _stop_maintenance_vm(ctx: Context, t: Template, *, shutdown: bool) -> None:
    """Refuse (or, with ``shutdown``, stop and remove) a running maintenance VM."""
    vm = t.maintenance_vm
    if vm is None:
        return
    state = fleet.call_driver(ctx, ctx.driver.state, name=vm)
    if state == "running":
        if not shutdown:
            raise Conflict(
                f"the maintenance VM of template {t.name} is running; shut it down first, or"
                f" add --shutdown to let goldfleet do it"
            )
        fleet.call_driver(ctx, ctx.driver.shutdown, name=vm, timeout=ctx.settings.shutdown_timeout)
    if state != "undefined":
        fleet.call_driver(ctx, ctx.driver.undefine, name=vm)
    t.maintenance_vm = None


def abort_maintenance(
    ctx: Context, name: str, *, actor: str, shutdown: bool = True
) -> TemplateView:
    """Discard the overlay; no version is made."""
    with ctx.template_lock(name), ctx.session() as s:
        t = get_template(s, name)
        rules.check_in_maintenance(t.name, t.status)
        _stop_maintenance_vm(ctx, t, shutdown=shutdown)
        overlay = t.overlay
        t.status, t.overlay, t.error = TemplateStatus.READY, None, None
        audit.record(s, actor, "template.maintenance.abort", name)
        s.commit()
        crashpoints.reached("maintenance-abort.committed")
        if overlay:
            (ctx.layers.dir / overlay).unlink(missing_ok=True)
        return template_view(s, t)


@dataclass(frozen=True, slots=True)
class _ExitRequest:
    """What a maintenance exit was asked to do beyond sealing: stored on the template before
    the overlay is sealed, so that whoever finishes the exit — this request, or recovery after
    a crash — makes the new version and starts its rollout as one."""

    actor: str
    recreate: RecreateScope = RecreateScope.NONE
    policy: Policy | None = None
    start_at: datetime | None = None
    guest_tool_version: str | None = None
    quarantine_version: str | None = None
    held: str | None = None  # why the new version waits for validation (ctx.version_hold)

    def to_json(self) -> dict[str, Any]:
        return {
            "held": self.held,
            "actor": self.actor,
            "recreate": str(self.recreate),
            "policy": self.policy.to_json() if self.policy is not None else None,
            "start_at": self.start_at.isoformat() if self.start_at is not None else None,
            "guest_tool_version": self.guest_tool_version,
            "quarantine_version": self.quarantine_version,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> _ExitRequest:
        if not data:  # an exit interrupted before this was stored (an older server)
            return cls(actor="recovery")
        return cls(
            actor=data["actor"],
            recreate=RecreateScope(data.get("recreate") or RecreateScope.NONE),
            policy=Policy.from_json(data["policy"]) if data.get("policy") else None,
            start_at=datetime.fromisoformat(data["start_at"]) if data.get("start_at") else None,
            guest_tool_version=data.get("guest_tool_version"),
            quarantine_version=data.get("quarantine_version"),
            held=data.get("held"),
        )


def _guest_tool_version(ctx: Context, t: Template, asked: str | None) -> str | None:
    """The guest tool version a new version's image holds: ``auto`` reads it from the running
    maintenance VM through its agent (before a ``--shutdown`` stops it)."""
    if asked is None:
        return None
    if asked != "auto":
        if guest.version_key(asked) is None:
            raise InvalidInput(
                f"guest tool version {asked!r} is not a version (such as 1.0.0) nor auto"
            )
        return asked.strip()
    vm = t.maintenance_vm
    if vm is None or fleet.call_driver(ctx, ctx.driver.state, name=vm) != "running":
        raise Conflict(
            f"--guest-tool-version auto reads the tool from the running maintenance VM of"
            f" template {t.name}; start it (goldfleet template maintenance start {t.name}) or"
            " give the version"
        )
    raw = fleet.call_driver(
        ctx, ctx.driver.guest_read, name=vm, path=guest.GUEST_TOOL_PATH, limit=4096
    )
    found = guest.version_in(raw.decode("utf-8", "replace")) if raw else None
    if found is None:
        raise Conflict(
            f"the maintenance VM of template {t.name} has no goldfleet-guest at"
            f" {guest.GUEST_TOOL_PATH} (or it declares no version); install it or give the version"
        )
    return found


def _quarantine_version(s: Session, t: Template, asked: str | None) -> str | None:
    """The quarantine version a new version carries: one of the template's policy."""
    if asked is None:
        return None
    text = s.scalar(
        select(QuarantinePolicy.text)
        .where(QuarantinePolicy.template_id == t.id)
        .order_by(QuarantinePolicy.number.desc())
        .limit(1)
    )
    if text is None:
        raise Conflict(
            f"template {t.name} has no quarantine policy; apply one (goldfleet compliance apply"
            f" {t.name} FILE) before naming a quarantine version"
        )
    policy = quarantine.parse_policy(text, check_plugin=False)
    if policy.kind is quarantine.Kind.CUSTOM:
        raise InvalidInput(f"template {t.name}'s policy is custom: it has no versions to name")
    return policy.version(asked).name


def exit_maintenance(
    ctx: Context,
    name: str,
    *,
    recreate: RecreateScope = RecreateScope.NONE,
    shutdown: bool = False,
    actor: str,
    policy: Policy | None = None,
    start_at: datetime | None = None,
    guest_tool_version: str | None = None,
    quarantine_version: str | None = None,
) -> MaintenanceExitView:
    """Seal the overlay as the new version, current at once (optionally with clones recreated
    on it) unless it waits for validation: at a site, a version of a template HQ sends stays
    ``pending-validation`` until HQ validates it (``ctx.version_hold``, docs/sites.md).

    The request, with its rollout, is stored on the template before anything is sealed, and
    the new version and the rollout's operation are committed in one transaction: after a
    crash at any instant the template is either still in maintenance with its overlay (run the
    exit again) or the version and its rollout both exist (recovery finishes what was sealed,
    :func:`recover_templates`)."""
    held = ctx.held_for_validation(check_name(name, "template name"))
    if held is not None and rules.recreate_flags(recreate)[0]:
        raise Conflict(
            f"template {name}: the version this exit seals will wait for validation ({held}),"
            " so no clone can be recreated on it now; exit with --recreate none, and recreate"
            f" once it is current here (goldfleet clone recreate --template {name})"
        )
    with ctx.template_lock(name):
        with ctx.session() as s:
            t = get_template(s, name)
            rules.check_in_maintenance(t.name, t.status)
            do_recreate, include_full = rules.recreate_flags(recreate)
            if do_recreate:
                fleet.check_recreate(s, t, policy, include_full)
            request = _ExitRequest(
                actor=actor,
                recreate=recreate,
                policy=policy,
                start_at=start_at,
                guest_tool_version=_guest_tool_version(ctx, t, guest_tool_version),
                quarantine_version=_quarantine_version(s, t, quarantine_version),
                held=held,
            )
            _stop_maintenance_vm(ctx, t, shutdown=shutdown)
            parent = get_version(s, t, None).top_layer
            overlay = ctx.layers.dir / t.overlay
            if not overlay.exists():
                raise StoreError(
                    f"the maintenance overlay of template {name} is missing; abort maintenance"
                    f" (goldfleet template maintenance abort {name}) and enter it again"
                )
            t.status, t.owner = TemplateStatus.EXITING_MAINTENANCE, ctx.server_id
            t.exit_request = request.to_json()
            s.commit()
        crashpoints.reached("maintenance-exit.requested")
        try:
            info = ctx.layers.check_and_hash(overlay, parent=parent)
        except GoldfleetError as exc:
            with ctx.session() as s:
                t = get_template(s, name)
                t.status, t.error = TemplateStatus.MAINTENANCE, exc.message
                t.owner, t.exit_request = None, None
                s.commit()
            raise
        with ctx.session() as s:
            t = get_template(s, name)
            t.sealing = info.digest
            s.commit()
        crashpoints.reached("maintenance-exit.hashed")
        # the point of no return: from here on recovery finishes the exit, rollout included
        ctx.layers.commit_work(overlay, info)
        crashpoints.reached("maintenance-exit.sealed")
        number, op_id = _finish_exit(ctx, name, info)
        crashpoints.reached("maintenance-exit.committed")
    op = rollouts.launch(ctx, op_id, False) if op_id is not None else None
    with ctx.session() as s:
        t = get_template(s, name)
        view = template_view(s, t)
    return MaintenanceExitView(
        template=view, version=number, clones_behind=view.clones_behind, operation=op
    )


def _finish_exit(
    ctx: Context, name: str, sealed: LayerInfo, *, recovered: bool = False
) -> tuple[int, int | None]:
    """The DB half of an exit once the overlay is a sealed layer; runs again after a crash.
    The new version and the operation of the stored request's rollout are one transaction.
    Returns the version's number and the operation's id (None: no recreate was asked)."""
    with ctx.session() as s:
        t = get_template(s, name)
        request = _ExitRequest.from_json(t.exit_request)
        add_layer(s, sealed)
        info, flattened = _maybe_flatten(ctx, s, sealed)
        add_layer(s, info)
        status = VersionStatus.PENDING_VALIDATION if request.held else VersionStatus.ENABLED
        v = _add_version(s, t, info.digest, "maintenance" + flattened, status=status)
        v.guest_tool_version = request.guest_tool_version
        v.quarantine_version = request.quarantine_version
        op = None
        do_recreate, include_full = rules.recreate_flags(request.recreate)
        if do_recreate:
            op = fleet.start_recreate(
                ctx,
                s,
                t,
                include_full=include_full,
                actor=request.actor,
                policy=request.policy,
                start_at=request.start_at,
                committed_to=True,
            )
        t.status, t.overlay, t.sealing, t.error = TemplateStatus.READY, None, None, None
        t.owner, t.exit_request = None, None
        freed = _release_layers(ctx, s) if flattened else []
        audit.record(
            s,
            request.actor,
            "template.maintenance.exit",
            name,
            version=v.number,
            layer=info.digest,
            **({"status": status, "held": request.held} if request.held else {}),
            **({"finished_by": "recovery"} if recovered else {}),
        )
        s.commit()
        number, op_id = v.number, op.id if op is not None else None
    _remove_layer_files(ctx, freed)
    return number, op_id


def recover_templates(ctx: Context, abandoned: Abandoned) -> list[str]:
    """After a crash: finish or roll back the maintenance steps that a dead server left under
    way (``abandoned`` says whose; a live server's step is its own and goes on). Each step is
    claimed before it is touched, so two servers starting at once never finish one exit twice.
    An exit whose overlay was sealed is finished with the rollout it asked for; one that had
    not got that far leaves the template in maintenance, its overlay kept, to be exited again."""
    notes = []
    with ctx.session() as s:
        pending = [
            (t.name, t.status, t.overlay, t.sealing, t.owner)
            for t in s.scalars(
                select(Template).where(
                    Template.status.in_(
                        [TemplateStatus.ENTERING_MAINTENANCE, TemplateStatus.EXITING_MAINTENANCE]
                    )
                )
            )
        ]
    for name, status, overlay, sealing, owner in pending:
        if not abandoned(owner) or not _take_over_step(ctx, name, status, owner):
            continue
        overlay_path = ctx.layers.dir / overlay if overlay else None
        with ctx.session() as s:
            t = get_template(s, name)
            parent = t.current_version.top_layer if t.current_version else None
        if status == TemplateStatus.EXITING_MAINTENANCE and sealing and ctx.layers.has(sealing):
            if overlay_path and overlay_path.exists():
                overlay_path.unlink()
            layer_info = ctx.layers.check_and_hash(ctx.layers.path(sealing), parent=parent)
            number, op_id = _finish_exit(ctx, name, layer_info, recovered=True)
            rollout = f", its rollout is operation {op_id}" if op_id is not None else ""
            notes.append(f"template {name}: finished exiting maintenance as v{number}{rollout}")
            continue
        with ctx.session() as s:
            t = get_template(s, name)
            if overlay_path and overlay_path.exists():
                t.status = TemplateStatus.MAINTENANCE
            else:
                t.status, t.overlay = TemplateStatus.READY, None
            t.sealing, t.owner, t.exit_request = None, None, None
            s.commit()
            notes.append(f"template {name}: back to {t.status} after an interrupted step")
    return notes


def _take_over_step(ctx: Context, name: str, status: str, owner: str | None) -> bool:
    """Make this server the owner of a dead server's maintenance step, if the step is still
    that server's: False when another starting server took it first."""
    held = Template.owner.is_(None) if owner is None else Template.owner == owner
    with ctx.session() as s:
        took = s.execute(
            update(Template)
            .where(Template.name == name, Template.status == status, held)
            .values(owner=ctx.server_id)
        ).rowcount
        s.commit()
    return took == 1


def remove_leftover_layers(ctx: Context) -> list[str]:
    """After a crash, once :func:`recover_templates` has run: remove sealed layer files the
    catalog does not know. A step that seals a layer before committing its rows (an import, a
    flatten, a bundle) or removes files after committing (a delete) leaves one when killed in
    between; no step is under way now, so none is still to be registered."""
    with ctx.session() as s:
        known = set(s.scalars(select(Layer.digest)))
        known |= {d for d in s.scalars(select(Template.sealing)) if d}
    leftover = sorted(ctx.layers.sealed_digests() - known)
    _remove_layer_files(ctx, leftover)
    return [f"removed layer {d}, which no version holds (left by a crash)" for d in leftover]
