"""The maintenance VM: the overlay booted through the driver; exit refuses while it runs."""

from __future__ import annotations

import pytest

from goldfleet.cli.client import ClientError


def test_maintenance_vm_boots_the_overlay_and_exit_waits_for_it(client, template):
    entered = client.post("/templates/base/maintenance/enter")
    client.post("/templates/base/maintenance/start")
    vms = {vm["name"]: vm for vm in client.get("/sim/vms")}
    (vm,) = [v for v in vms.values() if v["name"].startswith("maintenance.")]
    assert vm["state"] == "running"

    with pytest.raises(ClientError) as refused:
        client.post("/templates/base/maintenance/exit", {"recreate": "none"})
    assert refused.value.status == 409
    assert "running" in refused.value.message and "--shutdown" in refused.value.message
    t = client.get("/templates/base")
    assert (t["status"], t["current_version"]) == ("maintenance", 1)  # nothing sealed

    out = client.post("/templates/base/maintenance/exit", {"recreate": "none", "shutdown": True})
    assert out["version"] == 2
    assert vm["name"] not in {v["name"] for v in client.get("/sim/vms")}  # stopped, undefined
    assert client.get("/templates/base")["overlay_path"] is None
    assert entered["overlay_path"]


def test_starting_a_maintenance_vm_needs_maintenance(client, template):
    with pytest.raises(ClientError) as refused:
        client.post("/templates/base/maintenance/start")
    assert refused.value.status == 409


def test_abort_stops_the_maintenance_vm(client, template):
    client.post("/templates/base/maintenance/enter")
    client.post("/templates/base/maintenance/start")
    client.post("/templates/base/maintenance/abort")
    assert not [v for v in client.get("/sim/vms") if v["name"].startswith("maintenance.")]
    assert client.get("/templates/base")["status"] == "ready"
