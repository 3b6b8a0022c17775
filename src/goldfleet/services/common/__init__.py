"""The shared kernel of the service packages: lookups of rows by name, the views services
return, the audit log, the JSON-lines progress streams and leases (work one server at a time may
do)."""

from __future__ import annotations

from goldfleet.services.common import audit, leases, streams
from goldfleet.services.common.lookups import (
    chain,
    get_clone,
    get_operation,
    get_template,
    get_version,
    operation_view,
    outline_of,
    template_view,
    template_views,
    version_view,
)
from goldfleet.services.common.views import (
    AuditView,
    CloneView,
    MaintenanceExitView,
    OperationView,
    StoreProblem,
    StoreReport,
    TemplateView,
    TokenView,
    VersionView,
    VolumeView,
    WaitingClone,
)

__all__ = [
    "AuditView",
    "CloneView",
    "MaintenanceExitView",
    "OperationView",
    "StoreProblem",
    "StoreReport",
    "TemplateView",
    "TokenView",
    "VersionView",
    "VolumeView",
    "WaitingClone",
    "audit",
    "chain",
    "get_clone",
    "get_operation",
    "get_template",
    "get_version",
    "leases",
    "operation_view",
    "outline_of",
    "streams",
    "template_view",
    "template_views",
    "version_view",
]
