"""The exception tree of goldfleet, in one place.

Every error a user can see derives from :class:`GoldfleetError`; the API maps each family to one
HTTP status and the CLI prints its message without a traceback. Messages name the object, what is
wrong and what to do.

    GoldfleetError
    ├── InvalidInput        bad name, size, payload, option            (HTTP 422)
    │   └── BadImage        an outside image refused by inspection     (HTTP 422)
    ├── NotFound            unknown template, version, clone, token    (HTTP 404)
    ├── Conflict            the object's state forbids the action      (HTTP 409)
    │   ├── HasDependents   deleting what others still depend on       (HTTP 409)
    │   └── NoSpace         not enough free disk for the work          (HTTP 409)
    ├── Unauthorized        missing or wrong token                     (HTTP 401)
    └── StoreError          qemu-img or the file system failed         (HTTP 500)
"""

from __future__ import annotations


class GoldfleetError(Exception):
    """Base of every error goldfleet reports to a user."""

    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(GoldfleetError):
    """The caller sent something goldfleet cannot accept; nothing was changed."""

    status_code = 422


class BadImage(InvalidInput):
    """An image from outside failed inspection; it was not imported."""


class NotFound(GoldfleetError):
    """The named object does not exist."""

    status_code = 404


class Conflict(GoldfleetError):
    """The object exists, but its current state forbids the action."""

    status_code = 409


class HasDependents(Conflict):
    """The object cannot be removed while others depend on it; the message names them."""

    def __init__(self, what: str, dependents: list[str]) -> None:
        shown = ", ".join(dependents[:10])
        more = f" and {len(dependents) - 10} more" if len(dependents) > 10 else ""
        super().__init__(f"{what} is still used by {shown}{more}; remove or rebase those first")
        self.dependents = dependents


class NoSpace(Conflict):
    """The disk lacks the space the work needs (or is full); nothing was changed. The message
    names the disk, the space needed and the space free. A refusal like the others (409, its
    ``error`` "NoSpace"), not a server error: the server is fine, its disk's state forbids the
    work until space is freed."""


class Unauthorized(GoldfleetError):
    """Missing or wrong credentials."""

    status_code = 401


class Forbidden(GoldfleetError):
    """The caller is known but may not do this."""

    status_code = 403


class TooManyRequests(GoldfleetError):
    """Too many attempts (failed logins of one user): wait, as the message says."""

    status_code = 429


class StoreError(GoldfleetError):
    """qemu-img or the file system failed while goldfleet was working on an image."""

    status_code = 500


class TooLarge(InvalidInput):
    """The request body is larger than the endpoint takes; nothing was read."""

    status_code = 413


class LengthRequired(InvalidInput):
    """A request body of unknown length where a bounded one is needed."""

    status_code = 411
