"""Request bodies (``…Create`` and friends); responses are the service views."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from goldfleet.domain.model import RecreateScope
from goldfleet.services.common import OperationView


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Rollout(Body):
    """How a bulk operation treats users, parallelism, canaries and failures, and when."""

    logoff: str = "wait"
    deadline: str | None = None
    grace: str | None = None
    message: str | None = None
    max_parallel: int | None = None
    per_host: int | None = None
    canary: int = 0
    canary_auto: bool = False
    stop_on_error: bool = True
    max_failures: str | None = None
    at: str | None = None


class CloneCreate(Body):
    template: str
    count: int | None = Field(default=None, ge=1, le=10_000)
    name: str | None = None
    full: bool = False
    wait: bool = False
    rollout: Rollout | None = None


class CloneBulkPublic(BaseModel):
    operation: OperationView
    clones: list[str]


class CloneRebase(Body):
    to: str | None = None


class CloneRecreate(Body):
    name: str | None = None
    template: str | None = None
    include_full: bool = False
    discard_data: bool = False
    wait: bool = False
    rollout: Rollout | None = None


class CloneRebaseMany(Body):
    template: str
    to: str | None = None
    wait: bool = False
    rollout: Rollout | None = None


class CloneRetry(Body):
    name: str | None = None
    all: bool = False
    wait: bool = False


class TemplateFromClone(Body):
    name: str
    clone: str


class MaintenanceExit(Body):
    recreate: RecreateScope = RecreateScope.NONE
    shutdown: bool = False  # stop a running maintenance VM first
    rollout: Rollout | None = None


class TokenCreate(Body):
    name: str
    role: str = "admin"


class TokenCreated(BaseModel):
    name: str
    role: str
    token: str
