"""Entities, states and the storage outline, as plain values."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class TemplateStatus(StrEnum):
    READY = "ready"
    ENTERING_MAINTENANCE = "entering-maintenance"
    MAINTENANCE = "maintenance"
    EXITING_MAINTENANCE = "exiting-maintenance"


class VersionStatus(StrEnum):
    """A version is *enabled* (it may become current, be distributed and be fed to edge
    stores) unless a site sealed it of a template HQ sends: then it is *pending-validation*
    there and at HQ until HQ validates it (docs/sites.md)."""

    ENABLED = "enabled"
    PENDING_VALIDATION = "pending-validation"


class CloneKind(StrEnum):
    LINKED = "linked"
    FULL = "full"


class CloneStatus(StrEnum):
    """Lifecycle of a clone. Only ``ready`` clones are complete; ``failed`` ones carry the action
    that failed so that ``clone retry`` can finish it."""

    CREATING = "creating"
    READY = "ready"
    REBUILDING = "rebuilding"
    DELETING = "deleting"
    FAILED = "failed"


class Power(StrEnum):
    STOPPED = "stopped"
    RUNNING = "running"


class VolumeRole(StrEnum):
    SYSTEM = "system"
    TEMP = "temp"
    DATA = "data"


class CloneAction(StrEnum):
    """What a clone is being made to do; recorded before any file is touched."""

    CREATE = "create"
    RESTORE = "restore"
    REBASE = "rebase"
    RECREATE = "recreate"
    DELETE = "delete"
    # power and sessions: they leave the clone's files and status alone (LIGHT below)
    START = "start"
    STOP = "stop"
    MESSAGE = "message"  # the text is the operation's policy message
    LOGOFF = "logoff"  # every user logged in when the item runs


# Actions done on a clone without marking it (its status stays, its files are not touched):
# an operation's item for one of them fails alone, the clone is not failed by it.
LIGHT_ACTIONS = frozenset(
    {CloneAction.START, CloneAction.STOP, CloneAction.MESSAGE, CloneAction.LOGOFF}
)


class RecreateScope(StrEnum):
    NONE = "none"
    LINKED = "linked"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class Outline:
    """The volumes a template's clones get: one system volume plus sized temp and data volumes."""

    temp: tuple[int, ...] = ()
    data: tuple[int, ...] = ()

    def to_json(self) -> dict[str, list[int]]:
        return {"temp": list(self.temp), "data": list(self.data)}

    @classmethod
    def from_json(cls, value: dict[str, list[int]]) -> Outline:
        return cls(temp=tuple(value.get("temp", ())), data=tuple(value.get("data", ())))

    def volume_files(self) -> list[tuple[VolumeRole, int, str]]:
        """(role, index, file name) of every volume of a clone, system first."""
        files = [(VolumeRole.SYSTEM, 0, "system.qcow2")]
        files += [(VolumeRole.TEMP, i, f"temp{i}.qcow2") for i in range(len(self.temp))]
        files += [(VolumeRole.DATA, i, f"data{i}.qcow2") for i in range(len(self.data))]
        return files
