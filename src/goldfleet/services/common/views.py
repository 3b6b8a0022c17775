"""What services return: plain, JSON-ready views (the API's ``…Public`` schemas)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class VersionView(BaseModel):
    number: int
    name: str  # v1, v2, …
    top_layer: str
    chain: list[str]  # layer digests, top first
    current: bool
    clones: int
    note: str
    guest_tool_version: str | None = None  # the guest tool its image holds, when known
    quarantine_version: str | None = None  # its quarantine version (docs/guests.md)
    created_at: datetime
    status: str = "enabled"  # or pending-validation (domain.model.VersionStatus)


class TemplateView(BaseModel):
    name: str
    status: str
    kind: str
    temp: list[int]
    data: list[int]
    system_size: int | None
    current_version: int | None
    versions: int
    clones: int
    clones_behind: int
    overlay_path: str | None = None
    error: str | None = None
    created_at: datetime


class VolumeView(BaseModel):
    role: str
    index: int
    path: str
    size: int
    version: str | None  # the version a system volume shows; None for temp and data


class CloneView(BaseModel):
    name: str
    template: str
    version: int
    kind: str
    status: str
    power: str
    action: str | None = None
    target_version: int | None = None
    error: str | None = None
    operation_id: int | None = None
    volumes: list[VolumeView] | None = None
    created_at: datetime


class WaitingClone(BaseModel):
    clone: str
    reason: str


class OperationView(BaseModel):
    id: int
    kind: str
    target: str
    status: str
    total: int
    done: int
    failed: int
    queued: int = 0
    running: int = 0
    skipped: int = 0
    cancelled: int = 0
    error: str | None
    actor: str
    created_at: datetime
    finished_at: datetime | None
    start_at: datetime | None = None
    paused_reason: str | None = None
    policy: dict = {}
    current: list[str] = []  # clones being worked on now
    waiting: list[WaitingClone] = []  # queued clones and why they wait


class MaintenanceExitView(BaseModel):
    template: TemplateView
    version: int
    clones_behind: int
    operation: OperationView | None = None


class StoreProblem(BaseModel):
    file: str
    problem: str


class StoreReport(BaseModel):
    layers: int
    clones_checked: int  # clones whose volumes were checked or vouched for
    problems: list[StoreProblem]
    files_checked: int = 0  # files read and checked by this verify
    files_skipped: int = 0  # with since=last: unchanged since the clean verify at ``since``
    since: datetime | None = None  # with since=last: that clean verify (None: none recorded)
    full_verify_at: datetime | None = None  # the last clean verify that read every file
    seconds: float = 0.0


class TokenView(BaseModel):
    name: str
    role: str
    created_at: datetime
    revoked: bool
    grants: list[str] = []  # "ROLE on SCOPE"


class AuditView(BaseModel):
    at: datetime
    actor: str
    action: str
    target: str
    detail: dict
