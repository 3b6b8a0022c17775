"""Who may do what, where: permissions, roles (named sets of them), scopes and grants.

A *grant* gives a role on a scope: ``/`` (everything), ``template:NAME`` (the template, its
versions, its pools and its clones), ``pool:NAME`` (the pool and its clones), ``site:NAME``,
``cluster:NAME``, ``clone:NAME`` (one clone) or ``self`` (the clones assigned to the user who
holds the grant). An object sits at a *path*: the set of scopes that cover it (a clone of
template T in pool P is at ``{/, template:T, pool:P, clone:C}``, plus ``self`` for the user it
is assigned to). A caller may do permission X on an object when one of its grants has a role
holding X on a scope in the object's path. No I/O here: the services resolve paths and grants.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from goldfleet.errors import InvalidInput

# every permission, with what it allows (docs/access.md lists the same)
PERMISSIONS: dict[str, str] = {
    "template.read": "list and show templates and their versions",
    "template.write": "import, create from a clone, flatten, publish, delete templates/versions",
    "template.maintenance": "enter, start, exit and abort maintenance",
    "clone.read": "list and show clones",
    "clone.create": "make clones of a template",
    "clone.delete": "delete clones",
    "clone.start": "start clones",
    "clone.stop": "stop clones",
    "clone.restore": "restore a clone to its version (its changes discarded)",
    "clone.rebase": "rebase clones onto another version",
    "clone.recreate": "recreate clones and retry failed clone actions",
    "clone.message": "send a message to the users of a clone",
    "clone.logoff": "log off the users of a clone",
    "operation.read": "list and show operations",
    "operation.control": "pause, resume and cancel operations",
    "pool.read": "list and show pools",
    "pool.write": "create, drain, enable and delete pools",
    "pool.assign": "assign and release the clones of a pool to users",
    "site.read": "list sites, show a site's status",
    "site.write": "create, revoke and assign sites; join, sync and schedule at a site",
    "cluster.read": "list hosts and clusters",
    "cluster.write": "prefetch to and prune hosts' edge stores; change clusters",
    "bundle.export": "export signed offline bundles",
    "bundle.import": "import bundles",
    "key.read": "show the signing key and the trusted keys",
    "key.write": "trust and untrust keys",
    "store.verify": "verify the whole layer store",
    "audit.read": "read the audit log",
    "user.read": "list users, roles, grants and tokens",
    "user.write": "create and change users, roles, grants and tokens",
    "compliance.read": "show quarantine policies, clones' network access and guest tool versions",
    "compliance.write": "apply quarantine policies and run compliance checks",
    "agent.update": "update the guest tool of templates' clones in bulk (agent update)",
    "sim.read": "read the simulated world (sessions, messages, VMs)",
    "sim.write": "change the simulated world (log users in and out, guest shutdowns)",
}

READ = frozenset(p for p in PERMISSIONS if p.endswith(".read"))

BUILTIN_ROLES: dict[str, frozenset[str]] = {
    "admin": frozenset(PERMISSIONS),
    "operator": frozenset(
        {
            "template.read",
            "template.write",
            "template.maintenance",
            "operation.read",
            "operation.control",
            "pool.read",
            "pool.write",
            "pool.assign",
            "site.read",
            "cluster.read",
            "compliance.read",
            "compliance.write",
            "agent.update",
        }
        | {p for p in PERMISSIONS if p.startswith("clone.")}
    ),
    "helpdesk": frozenset(
        {
            "clone.read",
            "clone.start",
            "clone.stop",
            "clone.restore",
            "clone.message",
            "clone.logoff",
            "template.read",
            "pool.read",
            "operation.read",
            "compliance.read",
        }
    ),
    # reads the fleet, the audit log included; the sim driver's world is the admin's test tool
    "auditor": (READ - {"sim.read"}) | {"audit.read"},
    "user": frozenset({"clone.read", "clone.start", "clone.stop", "clone.restore"}),
}

# the scopes the ``user`` role may be granted on: it acts on the holder's own clones only
OWN_ONLY_ROLES = frozenset({"user"})

# what the roles of the API tokens made before grants existed stand for
TOKEN_ROLE_GRANTS: dict[str, tuple[str, str]] = {
    "admin": ("admin", "/"),
    "reader": ("auditor", "/"),
}

SCOPE_KINDS = ("template", "pool", "site", "cluster", "clone")
_SCOPE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def check_scope(scope: str) -> str:
    """``/``, ``self`` or ``KIND:NAME``; anything else is refused with the choices."""
    if scope in ("/", "self"):
        return scope
    kind, sep, name = scope.partition(":")
    if not sep or kind not in SCOPE_KINDS or not _SCOPE_NAME.match(name):
        raise InvalidInput(
            f"scope {scope!r} is not valid: use /, self, or one of"
            f" {', '.join(k + ':NAME' for k in SCOPE_KINDS)} (NAME in lower case)"
        )
    return scope


def check_permissions(allow: Iterable[str]) -> frozenset[str]:
    chosen = frozenset(p.strip() for p in allow if p.strip())
    if not chosen:
        raise InvalidInput("a role needs at least one permission (--allow clone.restore,...)")
    unknown = sorted(chosen - PERMISSIONS.keys())
    if unknown:
        raise InvalidInput(
            f"unknown permission(s) {', '.join(unknown)}: see docs/access.md for the list"
        )
    return chosen


def check_grant(role: str, scope: str, *, holder_kind: str) -> None:
    """The ``user`` role acts on one's own clones: it may be granted on ``self`` (a user's
    assigned clones) or ``clone:NAME`` only. ``self`` has no meaning for a token."""
    check_scope(scope)
    if role in OWN_ONLY_ROLES and not (scope == "self" or scope.startswith("clone:")):
        raise InvalidInput(
            f"the role {role} acts on one's own clones: grant it on self or clone:NAME, not {scope}"
        )
    if scope == "self" and holder_kind != "user":
        raise InvalidInput("the scope self (the clones assigned to a user) is for users only")


@dataclass(frozen=True, slots=True)
class Grant:
    role: str
    scope: str
    permissions: frozenset[str] = field(default=frozenset(), compare=False)

    def __str__(self) -> str:
        return f"{self.role} on {self.scope}"


def resolve(
    grants: Iterable[tuple[str, str]], custom: Mapping[str, frozenset[str]]
) -> tuple[Grant, ...]:
    """(role, scope) pairs with each role's permissions; a role that no longer exists gives
    none."""
    out = []
    for role, scope in grants:
        perms = BUILTIN_ROLES.get(role)
        if perms is None:
            perms = custom.get(role, frozenset())
        out.append(Grant(role, scope, frozenset(perms)))
    return tuple(out)


def clone_path(
    name: str, template: str, pool: str | None, assigned: str | None, user: str | None
) -> frozenset[str]:
    """The scopes that cover a clone; ``self`` when it is assigned to ``user`` (the caller)."""
    path = {"/", f"template:{template}", f"clone:{name}"}
    if pool:
        path.add(f"pool:{pool}")
    if assigned is not None and user is not None and assigned == user:
        path.add("self")
    return frozenset(path)


def template_path(name: str) -> frozenset[str]:
    return frozenset({"/", f"template:{name}"})


def pool_path(name: str, template: str | None) -> frozenset[str]:
    path = {"/", f"pool:{name}"}
    if template:
        path.add(f"template:{template}")
    return frozenset(path)


def site_path(name: str) -> frozenset[str]:
    return frozenset({"/", f"site:{name}"})


def cluster_path(name: str | None) -> frozenset[str]:
    """A cluster, or a host (in its cluster when it is in one)."""
    return frozenset({"/", f"cluster:{name}"}) if name else ROOT


ROOT = frozenset({"/"})


def allows(grants: Iterable[Grant], permission: str, path: frozenset[str]) -> bool:
    return any(permission in g.permissions and g.scope in path for g in grants)


def holds_anywhere(grants: Iterable[Grant], permission: str) -> bool:
    return any(permission in g.permissions for g in grants)


def denial(who: str, grants: Iterable[Grant], permission: str, path: frozenset[str]) -> str:
    """The 403 message: the permission missing, the scopes that would have given it, and what
    the caller holds."""
    grants = tuple(grants)
    order = ("/", "template", "pool", "site", "cluster", "clone")  # the widest first
    scopes = sorted(path - {"self"}, key=lambda s: (order.index(s.partition(":")[0]), s))
    held = ", ".join(str(g) for g in grants) or "no grants"
    wanted = ", ".join(scopes[:-1]) + (" or " if len(scopes) > 1 else "") + scopes[-1]
    return (
        f"{who} lacks {permission} on {scopes[-1]}: it needs a role with {permission} on"
        f" {wanted} (it holds {held})"
    )


@dataclass(frozen=True, slots=True)
class Reach:
    """Where a caller holds one permission: everywhere, or on some scopes (a list shows what
    falls under one of them)."""

    everything: bool = False
    templates: frozenset[str] = frozenset()
    pools: frozenset[str] = frozenset()
    sites: frozenset[str] = frozenset()
    clusters: frozenset[str] = frozenset()
    clones: frozenset[str] = frozenset()
    own: str | None = None  # clones assigned to this user

    @property
    def nothing(self) -> bool:
        return not (
            self.everything
            or self.templates
            or self.pools
            or self.sites
            or self.clusters
            or self.clones
            or self.own
        )

    def sees(self, path: frozenset[str]) -> bool:
        if self.everything:
            return True
        return any(
            s in path
            for s in (
                *(f"template:{n}" for n in self.templates),
                *(f"pool:{n}" for n in self.pools),
                *(f"site:{n}" for n in self.sites),
                *(f"cluster:{n}" for n in self.clusters),
                *(f"clone:{n}" for n in self.clones),
                *(("self",) if self.own else ()),
            )
        )


def reach(grants: Iterable[Grant], permission: str, user: str | None) -> Reach:
    scopes = {g.scope for g in grants if permission in g.permissions}
    if "/" in scopes:
        return Reach(everything=True)

    def named(kind: str) -> frozenset[str]:
        return frozenset(s.split(":", 1)[1] for s in scopes if s.startswith(kind + ":"))

    return Reach(
        templates=named("template"),
        pools=named("pool"),
        sites=named("site"),
        clusters=named("cluster"),
        clones=named("clone"),
        own=user if "self" in scopes and user else None,
    )


# failed logins of one user: the first FREE_FAILURES cost nothing; then each further attempt
# waits, from the last failure, THROTTLE_SECONDS doubled per failure beyond, at most MAX_THROTTLE
FREE_FAILURES = 5
THROTTLE_SECONDS = 30
MAX_THROTTLE = 15 * 60


def login_wait(failures: int, last_failure: datetime | None, now: datetime) -> int:
    """Seconds a user must wait before its password is checked again (0: not throttled)."""
    if failures < FREE_FAILURES or last_failure is None:
        return 0
    pause = min(THROTTLE_SECONDS * 2 ** (failures - FREE_FAILURES), MAX_THROTTLE)
    left = last_failure + timedelta(seconds=pause) - now
    return max(0, int(left.total_seconds() + 0.999))
