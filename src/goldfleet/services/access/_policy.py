"""The one policy: a caller's grants, the path (scopes) of the object a request touches, and the
decision. Every API route asks here (api/deps.py ``Allow`` for objects named in the path,
``authorize`` for objects named in the body, ``reach``/``visible`` for lists)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from goldfleet.context import Context
from goldfleet.db.tables import (
    Clone,
    Cluster,
    ClusterHost,
    Operation,
    OperationItem,
    Pool,
    Role,
    Template,
)
from goldfleet.db.tables import Grant as GrantRow
from goldfleet.domain import access as rules
from goldfleet.domain.access import Grant, Reach
from goldfleet.errors import Forbidden

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: a token (``name`` its name, as the audit log has always recorded it) or
    a logged-in user (``name`` ``user:NAME``, ``user`` NAME), with the grants it holds."""

    name: str
    role: str  # a token's role as made (admin, reader, site, or a role name); "" for users
    grants: tuple[Grant, ...] = ()
    user: str | None = None

    @property
    def who(self) -> str:
        return f"user {self.user}" if self.user else f"token {self.name} ({self.role})"

    @property
    def can_write(self) -> bool:
        """Holds every permission on / (an admin)."""
        return any(
            g.scope == "/" and g.permissions >= rules.BUILTIN_ROLES["admin"] for g in self.grants
        )


def custom_roles(s: Session) -> dict[str, frozenset[str]]:
    return {r.name: frozenset(r.permissions.get("allow", ())) for r in s.scalars(select(Role))}


def grants_of(s: Session, holder_kind: str, holder: str) -> tuple[Grant, ...]:
    pairs = [
        (g.role, g.scope)
        for g in s.scalars(
            select(GrantRow)
            .where(GrantRow.holder_kind == holder_kind, GrantRow.holder == holder)
            .order_by(GrantRow.id)
        )
    ]
    custom = custom_roles(s) if any(r not in rules.BUILTIN_ROLES for r, _ in pairs) else {}
    return rules.resolve(pairs, custom)


# --- the path of an object ---------------------------------------------------------------


def clone_path(s: Session, name: str, user: str | None) -> frozenset[str]:
    row = s.execute(
        select(Template.name, Pool.name, Clone.assigned_user)
        .select_from(Clone)
        .join(Template, Clone.template_id == Template.id)
        .outerjoin(Pool, Clone.pool_id == Pool.id)
        .where(Clone.name == name)
    ).first()
    if row is None:  # no such clone: only / covers it (the service says it does not exist)
        return frozenset({"/", f"clone:{name}"})
    return rules.clone_path(name, row[0], row[1], row[2], user)


def pool_path(s: Session, name: str) -> frozenset[str]:
    template = s.scalar(
        select(Template.name).join(Pool, Pool.template_id == Template.id).where(Pool.name == name)
    )
    return rules.pool_path(name, template)


def operation_paths(s: Session, ids: Iterable[int], user: str | None) -> dict[int, frozenset[str]]:
    """Each operation is covered by the scopes of the clones it works on (and its pool)."""
    ids = list(ids)
    paths: dict[int, set[str]] = {i: {"/"} for i in ids}
    if not ids:
        return {}
    rows = s.execute(
        select(
            OperationItem.operation_id,
            OperationItem.clone_name,
            Template.name,
            Pool.name,
            Clone.assigned_user,
        )
        .select_from(OperationItem)
        .outerjoin(Clone, OperationItem.clone_id == Clone.id)
        .outerjoin(Template, Clone.template_id == Template.id)
        .outerjoin(Pool, Clone.pool_id == Pool.id)
        .where(OperationItem.operation_id.in_(ids))
    )
    for op_id, clone, template, pool, assigned in rows:
        paths[op_id].add(f"clone:{clone}")
        if template:
            paths[op_id].add(f"template:{template}")
        if pool:
            paths[op_id].add(f"pool:{pool}")
        if assigned is not None and assigned == user:
            paths[op_id].add("self")
    for op_id, pool in s.execute(
        select(Operation.id, Pool.name)
        .join(Pool, Operation.pool_id == Pool.id)
        .where(Operation.id.in_(ids))
    ):
        paths[op_id].add(f"pool:{pool}")
    return {i: frozenset(p) for i, p in paths.items()}


def path_of(ctx: Context, kind: str | None, name: str | None, caller: Caller) -> frozenset[str]:
    if kind is None or name is None:
        return rules.ROOT
    if kind == "template":
        return rules.template_path(name)
    if kind == "site":
        return rules.site_path(name)
    if kind == "cluster":
        return rules.cluster_path(name)
    with ctx.session() as s:
        if kind == "host":  # a host is covered by its cluster's grants
            cluster = s.scalar(
                select(Cluster.name)
                .join(ClusterHost, ClusterHost.cluster_id == Cluster.id)
                .where(ClusterHost.name == name)
            )
            return rules.cluster_path(cluster)
        if kind == "clone":
            return clone_path(s, name, caller.user)
        if kind == "pool":
            return pool_path(s, name)
        if kind == "operation":
            if not name.isdigit():  # not an operation id: only / covers it (422 for those)
                return rules.ROOT
            return operation_paths(s, [int(name)], caller.user)[int(name)]
    raise ValueError(f"no path for objects of kind {kind}")


# --- the decisions -----------------------------------------------------------------------


def authorize(
    ctx: Context, caller: Caller, permission: str, kind: str | None = None, name: str | None = None
) -> None:
    """Refuse (403, naming the permission and the scope) unless one of the caller's grants has
    ``permission`` on a scope that covers the object (``kind`` ``name``; none: the whole
    fleet, ``/``)."""
    assert permission in rules.PERMISSIONS, permission
    if rules.allows(caller.grants, permission, rules.ROOT):
        return  # on /: no need to look the object up
    path = path_of(ctx, kind, name, caller)
    if not rules.allows(caller.grants, permission, path):
        raise Forbidden(rules.denial(caller.who, caller.grants, permission, path))


def reach(caller: Caller, permission: str) -> Reach:
    """Where the caller holds ``permission`` (a list shows only what falls there); refused when
    nowhere."""
    assert permission in rules.PERMISSIONS, permission
    found = rules.reach(caller.grants, permission, caller.user)
    if found.nothing:
        raise Forbidden(rules.denial(caller.who, caller.grants, permission, rules.ROOT))
    return found


def visible(
    caller: Caller, permission: str, items: Iterable[T], path: Callable[[T], frozenset[str]]
) -> list[T]:
    """The items of a list the caller may see (``path`` gives each one's scopes)."""
    found = reach(caller, permission)
    return [i for i in items if found.sees(path(i))]


def visible_operations(ctx: Context, caller: Caller, items: list[T]) -> list[T]:
    found = reach(caller, "operation.read")
    if found.everything:
        return items
    with ctx.session() as s:
        paths = operation_paths(s, [i.id for i in items], caller.user)  # type: ignore[attr-defined]
    return [i for i in items if found.sees(paths[i.id])]  # type: ignore[attr-defined]
