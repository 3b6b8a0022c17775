"""``goldfleet sim`` against a real server: a user logs into a real clone, the guest shuts
itself down, and goldfleet notices through the driver."""

from __future__ import annotations

import time


def test_cli_sim_world(fleet, template):
    assert fleet.cli_json("clone", "create", "base", "--name", "desk-001")["clones"] == ["desk-001"]
    assert fleet.cli_json("clone", "start", "desk-001")["power"] == "running"

    made = fleet.cli_json("sim", "login", "desk-001", "alice")
    assert (made["vm"], made["user"]) == ("desk-001", "alice")
    assert [(s["vm"], s["user"]) for s in fleet.cli_json("sim", "sessions")] == [
        ("desk-001", "alice")
    ]
    assert fleet.cli_json("sim", "sessions", "--vm", "desk-002") == []
    [vm] = fleet.cli_json("sim", "vms")
    assert (vm["name"], vm["state"], vm["users"]) == ("desk-001", "running", ["alice"])
    proc = fleet.cli("sim", "vms")
    assert proc.returncode == 0 and "desk-001" in proc.stdout and "alice" in proc.stdout

    down = fleet.cli_json("sim", "guest-shutdown", "desk-001")
    assert (down["state"], down["users"]) == ("stopped", [])
    assert fleet.cli_json("sim", "sessions") == []
    assert fleet.cli_json("sim", "messages", "--vm", "desk-001") == []

    proc = fleet.cli("sim", "logout", "desk-001", "alice")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["error: alice is not logged into VM desk-001"]

    # goldfleet was not told; it reads the power state back from the driver
    deadline = time.monotonic() + 15
    while fleet.cli_json("clone", "show", "desk-001")["power"] != "stopped":
        assert time.monotonic() < deadline, "goldfleet did not notice the guest's shutdown"
        time.sleep(0.2)
    audited = [a["action"] for a in fleet.cli_json("audit")]
    assert "sim.login" in audited and "sim.guest-shutdown" in audited
