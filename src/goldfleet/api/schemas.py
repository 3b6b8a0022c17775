"""Request bodies (``…Create`` and friends), the bounded parameters every router shares, and
the one shape of a refusal; responses are the service views.

Every integer is bounded and every flag is a JSON boolean, so that no input reaches the database
as a number it cannot hold (SQLite's OverflowError was a 500) and ``"yes"`` is not read as true.
The bounds are the domain's where a rule owns them; the schema states them so that a request out
of range is refused with a 422 naming the field, and the OpenAPI description says what is taken.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt
from pydantic_core import PydanticCustomError

from goldfleet.domain.model import RecreateScope
from goldfleet.domain.names import MAX_VERSION
from goldfleet.domain.rollout import MAX_CANARY, MAX_PARALLEL
from goldfleet.services.common import OperationView

MAX_ID = (1 << 63) - 1  # a row id: the most SQLite binds (OverflowError, a 500, past it)
MAX_LIST = 1000  # rows one listing returns at most


def _query_flag(value: object) -> object:
    """A query flag is ``true`` or ``false``; the lax reading also took yes, on, 1, t…"""
    if isinstance(value, str) and value not in ("true", "false"):
        raise PydanticCustomError("bool_parsing", "Input should be true or false")
    return value


RowId = Annotated[int, Path(ge=1, le=MAX_ID)]  # any row id in a path: operations, agent updates…
OperationId = RowId
VersionNumber = Annotated[int, Path(ge=1, le=MAX_VERSION)]
QueryFlag = Annotated[bool, BeforeValidator(_query_flag)]
ListLimit = Annotated[int, Query(ge=1, le=MAX_LIST)]  # rows of a listing (-1 gave every row)


class ErrorPublic(BaseModel):
    """Every refusal (4xx): the error's class (NotFound, Conflict, InvalidInput…) and a message
    that names the object, what is wrong and what to do."""

    error: str
    message: str


# every router's 4xx answers, in the OpenAPI description (FastAPI's own 422 shape is not ours)
ERRORS: dict[int | str, dict[str, object]] = {
    "4XX": {"model": ErrorPublic, "description": "Refused: the error's class and what to do"}
}


# what the streamed answers carry, for the OpenAPI description of their routes
JSON_LINES = {"application/x-ndjson": {"schema": {"type": "string"}}}  # start, progress…, end
BYTES = {"schema": {"type": "string", "format": "binary"}}
UPLOAD = {"requestBody": {"required": True, "content": {"application/octet-stream": BYTES}}}


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Rollout(Body):
    """How a bulk operation treats users, parallelism, canaries and failures, and when."""

    logoff: str = "wait"
    deadline: str | None = None
    grace: str | None = None
    message: str | None = None
    max_parallel: StrictInt | None = Field(default=None, ge=1, le=MAX_PARALLEL)
    per_host: StrictInt | None = Field(default=None, ge=1, le=MAX_PARALLEL)
    canary: StrictInt = Field(default=0, ge=0, le=MAX_CANARY)
    canary_auto: StrictBool = False
    stop_on_error: StrictBool = True
    max_failures: str | None = None
    at: str | None = None


class CloneCreate(Body):
    template: str
    count: int | None = Field(default=None, ge=1, le=10_000)
    name: str | None = None
    full: StrictBool = False
    wait: StrictBool = False
    rollout: Rollout | None = None


class CloneBulkPublic(BaseModel):
    operation: OperationView
    clones: list[str]


class CloneRebase(Body):
    to: str | None = None


class CloneRecreate(Body):
    name: str | None = None
    template: str | None = None
    include_full: StrictBool = False
    discard_data: StrictBool = False
    wait: StrictBool = False
    rollout: Rollout | None = None


class CloneRebaseMany(Body):
    template: str
    to: str | None = None
    wait: StrictBool = False
    rollout: Rollout | None = None


class CloneSelection(Body):
    """Clones by name (up to 10,000), or every ready clone of a template: one operation."""

    names: list[Annotated[str, Field(max_length=255)]] | None = Field(
        default=None, min_length=1, max_length=10_000
    )
    template: str | None = Field(default=None, max_length=255)
    wait: StrictBool = False
    rollout: Rollout | None = None


class CloneMessageMany(CloneSelection):
    text: str = Field(max_length=1000)


class CloneRetry(Body):
    name: str | None = None
    all: StrictBool = False
    wait: StrictBool = False


class TemplateFromClone(Body):
    name: str
    clone: str


class MaintenanceExit(Body):
    recreate: RecreateScope = RecreateScope.NONE
    shutdown: StrictBool = False  # stop a running maintenance VM first
    rollout: Rollout | None = None
    # the guest tool version the new version's image holds: "auto" reads it from the running
    # maintenance VM through its agent; a version such as "1.0.0" is taken as given
    guest_tool_version: str | None = Field(default=None, max_length=32)
    # the quarantine version of the template's policy the new version is at (docs/guests.md)
    quarantine_version: str | None = Field(default=None, max_length=63)


class TokenCreate(Body):
    name: str
    role: str | None = None  # admin, reader, site or a role; none: admin (user with a clone)
    scope: str | None = None  # where the role is granted (default /)
    clone: str | None = None  # the role user on this one clone (self-service restore)


class TokenCreated(BaseModel):
    name: str
    role: str
    token: str
    grants: list[str] = []  # "ROLE on SCOPE"
