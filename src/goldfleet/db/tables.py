"""Tables of goldfleet's state. SQLite (WAL) by default, PostgreSQL supported.

Rows hold names, digests and states; files are found from them by the store (a clone's folder is
its random ``uid``, a layer's file is its digest), never from a user string.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    # SQLite assigns row ids only to INTEGER PRIMARY KEY columns
    type_annotation_map: ClassVar = {
        dict[str, Any]: JSON,
        int: BigInteger().with_variant(Integer(), "sqlite"),
    }


class Layer(Base):
    __tablename__ = "layers"

    digest: Mapped[str] = mapped_column(String(71), primary_key=True)
    parent: Mapped[str | None] = mapped_column(ForeignKey("layers.digest"), index=True)
    size: Mapped[int]
    virtual_size: Mapped[int]
    depth: Mapped[int]  # 1 for a base layer
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Template(Base):
    __tablename__ = "templates"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    status: Mapped[str] = mapped_column(String(32), default="ready")
    kind: Mapped[str] = mapped_column(String(16), default="linked")
    outline: Mapped[dict[str, Any]]
    current_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("versions.id", use_alter=True, name="fk_template_current_version")
    )
    overlay: Mapped[str | None] = mapped_column(String(80))  # maintenance overlay file name
    sealing: Mapped[str | None] = mapped_column(String(71))  # digest being sealed on exit
    # the server doing the maintenance step under way (entering, exiting): recovery leaves the
    # step alone while that server is alive
    owner: Mapped[str | None] = mapped_column(String(36))
    # the exit under way: who asked, and the rollout to start with the new version (recreate
    # scope, policy, start time); stored before the overlay is sealed, cleared with the exit
    exit_request: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)  # why the last maintenance step failed
    maintenance_vm: Mapped[str | None] = mapped_column(String(63))  # VM booting the overlay
    # at HQ: when a new version becomes current at the sites (goldfleet.domain.sites)
    activate: Mapped[str] = mapped_column(String(24), default="on-verify")
    # the raw Ed25519 public key (hex) that signed the first bundle imported for it: bundles
    # signed by another key are refused until an admin rebinds it (services/distribution)
    bundle_key: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    versions: Mapped[list[Version]] = relationship(
        back_populates="template",
        foreign_keys="Version.template_id",
        order_by="Version.number",
    )
    current_version: Mapped[Version | None] = relationship(
        foreign_keys=[current_version_id], post_update=True
    )


class Version(Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("template_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("templates.id"))
    number: Mapped[int]
    top_layer: Mapped[str] = mapped_column(ForeignKey("layers.digest"))
    note: Mapped[str] = mapped_column(Text, default="")
    # enabled | pending-validation: a version a site sealed of a template HQ sends it, held (not
    # current, not distributed, not fed to edge stores) until HQ validates it (docs/sites.md)
    status: Mapped[str] = mapped_column(String(24), default="enabled", server_default="enabled")
    # the guest tool version its image holds, and its quarantine version (docs/guests.md)
    guest_tool_version: Mapped[str | None] = mapped_column(String(32))
    quarantine_version: Mapped[str | None] = mapped_column(String(63))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    template: Mapped[Template] = relationship(back_populates="versions", foreign_keys=[template_id])
    layer: Mapped[Layer] = relationship()


class Clone(Base):
    __tablename__ = "clones"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    uid: Mapped[str] = mapped_column(String(32), unique=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("templates.id"), index=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="creating", index=True)
    power: Mapped[str] = mapped_column(String(16), default="stopped")
    # the action under way or failed, and its target version; cleared when it completes
    action: Mapped[str | None] = mapped_column(String(16))
    target_version_id: Mapped[int | None] = mapped_column(ForeignKey("versions.id"))
    discard_data: Mapped[bool] = mapped_column(default=False)
    restart: Mapped[bool] = mapped_column(default=False)
    error: Mapped[str | None] = mapped_column(Text)
    operation_id: Mapped[int | None] = mapped_column(ForeignKey("operations.id"), index=True)
    # the server doing a single action (restore, rebase, delete) under way; an operation's
    # clones are their items' (OperationItem.owner)
    owner: Mapped[str | None] = mapped_column(String(36))
    host: Mapped[str | None] = mapped_column(String(63), index=True)
    pool_id: Mapped[int | None] = mapped_column(ForeignKey("pools.id"), index=True)
    assigned_user: Mapped[str | None] = mapped_column(String(63))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    template: Mapped[Template] = relationship(foreign_keys=[template_id])
    version: Mapped[Version] = relationship(foreign_keys=[version_id])
    target_version: Mapped[Version | None] = relationship(foreign_keys=[target_version_id])


class Operation(Base):
    """A long action over many clones, with its progress."""

    __tablename__ = "operations"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="running")
    total: Mapped[int] = mapped_column(default=0)
    done: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    # rollout policy (goldfleet.domain.rollout.Policy as JSON) and its progress
    policy: Mapped[dict[str, Any]] = mapped_column(default=dict)
    start_at: Mapped[datetime | None]
    paused_reason: Mapped[str | None] = mapped_column(Text)
    canary_passed: Mapped[bool] = mapped_column(default=False)
    pool_id: Mapped[int | None] = mapped_column(ForeignKey("pools.id"))


class OperationItem(Base):
    """One clone's part in an operation: queued until the runner starts it under the policy."""

    __tablename__ = "operation_items"
    __table_args__ = (Index("ix_items_op_state", "operation_id", "state"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    operation_id: Mapped[int] = mapped_column(ForeignKey("operations.id"))
    clone_id: Mapped[int | None] = mapped_column(
        ForeignKey("clones.id", ondelete="SET NULL"), index=True
    )
    clone_name: Mapped[str] = mapped_column(String(63))
    action: Mapped[str] = mapped_column(String(16))
    target_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("versions.id", ondelete="SET NULL")
    )
    discard_data: Mapped[bool] = mapped_column(default=False)
    # queued | running | done | failed | skipped | cancelled
    state: Mapped[str] = mapped_column(String(16), default="queued")
    reason: Mapped[str | None] = mapped_column(Text)  # why it waits, failed or was skipped
    owner: Mapped[str | None] = mapped_column(String(36))  # the server running it
    notified_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class Server(Base):
    """A running ``goldfleet serve`` process; its heartbeat keeps its claimed work its own."""

    __tablename__ = "servers"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int]
    # the id of the home it serves (goldfleet/homelock.py): a server that holds its home's lock
    # knows that the home's earlier servers are dead, without waiting out their lease
    home_id: Mapped[str | None] = mapped_column(String(36), index=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)


class Lease(Base):
    """A named piece of work one server at a time may do (e.g. ``host:NAME``, a host's edge
    store). Held while its owner's heartbeat is live (``servers``); a dead owner's lease is
    taken over, like the runner's items (services/common/leases.py)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner: Mapped[str] = mapped_column(String(36))
    taken_at: Mapped[datetime] = mapped_column(default=utcnow)


class Pool(Base):
    """Clones of one template kept at a size, with a buffer of idle ones."""

    __tablename__ = "pools"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("templates.id"))
    min_size: Mapped[int]
    max_size: Mapped[int]
    buffer: Mapped[int]
    enabled: Mapped[bool] = mapped_column(default=True)
    window_cron: Mapped[str | None] = mapped_column(String(100))
    window_minutes: Mapped[int | None]
    # how a window treats users of assigned clones (logoff, grace, message: a rollout Policy's
    # fields as JSON; none: wait), and when they were told of the window open at that time
    window_policy: Mapped[dict[str, Any] | None]
    window_notified_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    template: Mapped[Template] = relationship()


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class User(Base):
    """A person who logs in with a password (stored only as its Argon2 hash)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[datetime | None]
    failed_logins: Mapped[int] = mapped_column(default=0)  # since the last good login
    last_failed_at: Mapped[datetime | None]


class Role(Base):
    """A custom role: a named set of permissions (the built-in roles are in domain/access)."""

    __tablename__ = "roles"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(16), unique=True)
    permissions: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"allow": [...]}
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Grant(Base):
    """A role on a scope, held by a user or a token (``holder_kind`` user | token)."""

    __tablename__ = "grants"
    __table_args__ = (UniqueConstraint("holder_kind", "holder", "role", "scope"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    holder_kind: Mapped[str] = mapped_column(String(8))
    holder: Mapped[str] = mapped_column(String(63), index=True)
    role: Mapped[str] = mapped_column(String(16))
    scope: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LoginSession(Base):
    """A user's login: a bearer secret (stored as sha256) that expires."""

    __tablename__ = "login_sessions"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_name: Mapped[str] = mapped_column(String(63), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]


class Site(Base):
    """At HQ: a site that pulls versions with its own token, and what it last reported."""

    __tablename__ = "sites"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    token_name: Mapped[str] = mapped_column(String(63), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_contact: Mapped[datetime | None]
    states: Mapped[dict[str, Any]] = mapped_column(default=dict)  # "template:vN" -> state
    local_patches: Mapped[bool] = mapped_column(default=False)  # may publish versions upstream


class SiteTemplate(Base):
    """At HQ: a template assigned to a site, which of its versions it receives and when a new
    current version goes live there."""

    __tablename__ = "site_templates"
    __table_args__ = (UniqueConstraint("site_id", "template_id"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("templates.id"), index=True)
    versions: Mapped[str] = mapped_column(String(16), default="all")  # current | all | N
    publish_at: Mapped[datetime | None]  # a new current version goes live there at this time


class Upstream(Base):
    """At a site: its one link to HQ (URL and token live in the home): the sync schedule, the
    running sync's owner, what HQ last said of its rights and templates, and versions waiting
    for their publish time."""

    __tablename__ = "upstream"

    id: Mapped[int] = mapped_column(primary_key=True)
    schedule: Mapped[str | None] = mapped_column(String(100))  # cron expression, UTC
    sync_limit: Mapped[int | None] = mapped_column(BigInteger)  # bytes a second; None: no limit
    next_sync_at: Mapped[datetime | None]
    sync_owner: Mapped[str | None] = mapped_column(String(36))  # the server syncing now
    sync_started_at: Mapped[datetime | None]
    last_sync_at: Mapped[datetime | None]  # the last attempt, successful or not
    last_error: Mapped[str | None] = mapped_column(Text)
    last_success_at: Mapped[datetime | None]  # the last sync that ended without a problem
    rights: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"local-patches": bool}
    managed: Mapped[dict[str, Any]] = mapped_column(default=dict)  # template -> HQ's current
    pending: Mapped[dict[str, Any]] = mapped_column(default=dict)  # template -> {version, at}


class EdgeFeed(Base):
    """A host's edge store being fed a template's current version (docs/edge.md): scheduled
    when the version becomes current, copied in the background, its progress shown per host."""

    __tablename__ = "edge_feeds"

    host: Mapped[str] = mapped_column(String(63), primary_key=True)
    template: Mapped[str] = mapped_column(String(63), primary_key=True)
    version: Mapped[int]
    top_layer: Mapped[str] = mapped_column(String(71))
    state: Mapped[str] = mapped_column(String(16), default="queued")  # queued|copying|done|failed
    done: Mapped[int] = mapped_column(default=0)  # bytes of the chain on the host
    total: Mapped[int] = mapped_column(default=0)  # bytes of the chain
    copied: Mapped[int] = mapped_column(default=0)  # bytes written to the host by this feed
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEntry(Base):
    __tablename__ = "audit"
    __table_args__ = (Index("ix_audit_at", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(63))
    action: Mapped[str] = mapped_column(String(63))
    target: Mapped[str] = mapped_column(String(200))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class SimDomain(Base):
    """The sim driver's hypervisor state: its defined VMs and their power state."""

    __tablename__ = "sim_domains"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    host: Mapped[str] = mapped_column(String(63))
    state: Mapped[str] = mapped_column(String(16), default="stopped")
    disks: Mapped[dict[str, Any]] = mapped_column(default=dict)


class SimHost(Base):
    """The sim driver's host state: when a rebooting host is up again, and counters of its
    reboots and toolstack restarts (drivers/sim.py). A host with no row is up."""

    __tablename__ = "sim_hosts"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    up_at: Mapped[datetime | None]  # rebooting until then; None: up
    reboots: Mapped[int] = mapped_column(default=0)
    toolstack_restarts: Mapped[int] = mapped_column(default=0)


class SimSession(Base):
    """A simulated user logged into a simulated VM."""

    __tablename__ = "sim_sessions"
    __table_args__ = (UniqueConstraint("vm", "user"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    vm: Mapped[str] = mapped_column(String(63), index=True)
    user: Mapped[str] = mapped_column(String(63))
    since: Mapped[datetime] = mapped_column(default=utcnow)


class SimMessage(Base):
    """A message the sim driver delivered to the users of a VM."""

    __tablename__ = "sim_messages"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    vm: Mapped[str] = mapped_column(String(63), index=True)
    text: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class SimGuestFile(Base):
    """A file inside a simulated guest, as its agent would read and write it. A guest's files
    live on its disks: each row belongs to one disk file (its sim id, drivers/sim.py), and a
    guest sees its system volume's files over those of the layers below it."""

    __tablename__ = "sim_guest_files"

    disk: Mapped[str] = mapped_column(String(80), primary_key=True)
    path: Mapped[str] = mapped_column(String(255), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class SimFilter(Base):
    """A network filter defined on the simulated hosts (as libvirt's nwfilter keeps them)."""

    __tablename__ = "sim_filters"

    name: Mapped[str] = mapped_column(String(120), primary_key=True)
    xml: Mapped[str] = mapped_column(Text)


class QuarantinePolicy(Base):
    """A template's quarantine policy as applied: every applied text is kept, numbered."""

    __tablename__ = "quarantine_policies"
    __table_args__ = (UniqueConstraint("template_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("templates.id"), index=True)
    number: Mapped[int]
    text: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class GuestState(Base):
    """What goldfleet last learnt from inside a clone: its guest tool's version, its
    quarantine descriptor and the access that follows, since when and why. Keyed by clone id
    without a foreign key: a row of a deleted clone is never shown and goes at the next pass."""

    __tablename__ = "guest_states"

    clone_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    tool_version: Mapped[str | None] = mapped_column(String(32))
    descriptor: Mapped[str | None] = mapped_column(String(300))
    version: Mapped[str | None] = mapped_column(String(63))
    access: Mapped[str] = mapped_column(String(16), default="unknown")
    reason: Mapped[str] = mapped_column(Text, default="")
    filter: Mapped[str | None] = mapped_column(String(120))
    policy_number: Mapped[int | None]
    since: Mapped[datetime] = mapped_column(default=utcnow)
    checked_at: Mapped[datetime] = mapped_column(default=utcnow)


class AgentUpdate(Base):
    """A bulk update of the guest tool of one template's clones (``goldfleet agent update``),
    stored before its first step and advanced step by step by the runner's periodic pass: a
    server killed at any point leaves a row that the next pass carries on from."""

    __tablename__ = "agent_updates"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("templates.id"), index=True)
    # queued → entering → installing → exiting → pushing → done | failed
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    recreate_full: Mapped[bool] = mapped_column(default=False)
    rollout: Mapped[dict[str, Any] | None]  # the recreate's policy and start time
    actor: Mapped[str] = mapped_column(String(63))
    operation_id: Mapped[int | None]  # the recreate started by the maintenance exit
    version: Mapped[int | None]  # the version the exit made
    pushed: Mapped[dict[str, Any]] = mapped_column(default=dict)  # full clone → result
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Cluster(Base):
    """Hypervisor hosts updated together (docs/hosts.md): its coordinator, its one update
    channel, the proxy a sync goes through, the sync schedule and what the last sync made
    available."""

    __tablename__ = "clusters"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    coordinator: Mapped[str] = mapped_column(String(63))
    # the enabled channel: {kind, url, suite, components, arch, fingerprint, keyring (base64)}
    channel: Mapped[dict[str, Any] | None]
    # {url, username, password}: the password is never in a view, a log or the audit
    proxy: Mapped[dict[str, Any] | None]
    sync_schedule: Mapped[str | None] = mapped_column(String(100))  # cron, UTC; None: off
    next_sync_at: Mapped[datetime | None]
    sync_owner: Mapped[str | None] = mapped_column(String(36))  # the server syncing now
    sync_started_at: Mapped[datetime | None]
    last_update_sync: Mapped[datetime | None]
    # what the last sync made available: hash, coordinator, packages, what each host lacks
    last_sync: Mapped[dict[str, Any] | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    # the cluster's own guidance rules, tried before the shipped ones (domain/hostupdates.py)
    guidance_rules: Mapped[list[Any] | None] = mapped_column(JSON)
    # HA/balancing switches: {"disable": [argv, ...], "enable": [argv, ...]} (docs/host-updates.md)
    ha: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    hosts: Mapped[list[ClusterHost]] = relationship(
        back_populates="cluster", order_by="ClusterHost.id", cascade="all, delete-orphan"
    )


class ClusterHost(Base):
    """A host of a cluster (a host is in one cluster at most): its state, capacity and what it
    had installed when last read (docs/hosts.md, "What a host has installed")."""

    __tablename__ = "cluster_hosts"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    cluster_id: Mapped[int] = mapped_column(ForeignKey("clusters.id"), index=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    state: Mapped[str] = mapped_column(String(16), default="enabled")
    memory_mib: Mapped[int | None]
    vcpus: Mapped[int | None]
    installed: Mapped[dict[str, Any]] = mapped_column(default=dict)  # package → version
    booted_kernel: Mapped[str | None] = mapped_column(String(100))
    installed_at: Mapped[datetime | None]  # when ``installed`` was read from the host
    last_software_update: Mapped[datetime | None]
    last_update_hash: Mapped[str | None] = mapped_column(String(71))
    # guidance a rolling update left undone (above its level): {"host": [task], "vms": {vm:
    # [task]}, "hash": H, "category": {task: category}}
    pending: Mapped[dict[str, Any] | None]

    cluster: Mapped[Cluster] = relationship(back_populates="hosts")


class ClusterUpdate(Base):
    """A durable rolling update of a cluster (or a run of its pending guidance): what it was
    asked (hash, level, policy), its plan, and each step recorded as it completes
    (docs/host-updates.md). Advanced by the runner's periodic pass."""

    __tablename__ = "cluster_updates"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    cluster_id: Mapped[int] = mapped_column(ForeignKey("clusters.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # update | pending
    status: Mapped[str] = mapped_column(String(16))  # running, paused, done, failed
    hash: Mapped[str | None] = mapped_column(String(71))
    level: Mapped[str] = mapped_column(String(16))
    max_hosts: Mapped[int]
    policy: Mapped[dict[str, Any]] = mapped_column(default=dict)
    plan: Mapped[dict[str, Any]] = mapped_column(default=dict)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    actor: Mapped[str] = mapped_column(String(63))
    reason: Mapped[str | None] = mapped_column(Text)  # why it is paused or failed
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
