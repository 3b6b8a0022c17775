"""Request bodies (``…Create`` and friends); responses are the service views."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from goldfleet.domain.model import RecreateScope
from goldfleet.services.views import OperationView


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CloneCreate(Body):
    template: str
    count: int | None = Field(default=None, ge=1, le=10_000)
    name: str | None = None
    full: bool = False
    wait: bool = False


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


class CloneRetry(Body):
    name: str | None = None
    all: bool = False
    wait: bool = False


class TemplateFromClone(Body):
    name: str
    clone: str


class MaintenanceExit(Body):
    recreate: RecreateScope = RecreateScope.NONE


class TokenCreate(Body):
    name: str
    role: str = "admin"


class TokenCreated(BaseModel):
    name: str
    role: str
    token: str
