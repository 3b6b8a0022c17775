"""goldfleet: a control plane for the golden images of VM and VDI fleets.

The public surface is the service layer (``goldfleet.services``), the API (``goldfleet.api``)
and the CLI (``goldfleet.cli``); errors are described in :mod:`goldfleet.errors`.
"""

from goldfleet.errors import (
    BadImage,
    Conflict,
    GoldfleetError,
    HasDependents,
    InvalidInput,
    NotFound,
    StoreError,
    Unauthorized,
)

__version__ = "0.1.0"

__all__ = [
    "BadImage",
    "Conflict",
    "GoldfleetError",
    "HasDependents",
    "InvalidInput",
    "NotFound",
    "StoreError",
    "Unauthorized",
    "__version__",
]
