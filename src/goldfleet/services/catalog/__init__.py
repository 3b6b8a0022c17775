"""Templates and their versions: import, maintenance (enter, start, exit, abort), flatten,
create-from-clone, delete; the layers in use; store verification."""

from __future__ import annotations

from goldfleet.services.catalog._templates import (
    abort_maintenance,
    add_layer,
    check_new_name,
    create_from_clone,
    delete_template,
    delete_version,
    enter_maintenance,
    exit_maintenance,
    flatten_template,
    import_template,
    layer_sizes,
    list_templates,
    list_versions,
    recover_templates,
    remove_leftover_layers,
    show_template,
    start_maintenance_vm,
    used_layers,
)
from goldfleet.services.catalog._verify import (
    refuse_if_running,
    stream_verify,
    verify_store,
)

__all__ = [
    "abort_maintenance",
    "add_layer",
    "check_new_name",
    "create_from_clone",
    "delete_template",
    "delete_version",
    "enter_maintenance",
    "exit_maintenance",
    "flatten_template",
    "import_template",
    "layer_sizes",
    "list_templates",
    "list_versions",
    "recover_templates",
    "refuse_if_running",
    "remove_leftover_layers",
    "show_template",
    "start_maintenance_vm",
    "stream_verify",
    "used_layers",
    "verify_store",
]
