"""The whole way of a patch: HQ → a site → the site's hosts, through real servers.

HQ patches its template; the site (a second server, with edge stores for its two sim hosts)
pulls only the new layer over HTTP, and its rollout copies only that layer to each host before
it rebuilds the clones there, whose VMs then read their own host's copies.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sitekit import MiB, cli, layer_path, new_version, setup_site, start_servers

pytestmark = pytest.mark.slow

HOSTS = ("sim-host-1", "sim-host-2")


def edge_files(root: Path, host: str) -> set[str]:
    return set(os.listdir(root / host / "layers"))


def declared(site) -> dict[str, tuple[str, list[str]]]:
    """Each simulated VM at the site: its host and the backing chain its system disk names."""
    found = {}
    for name, host, disks in site.rows("SELECT name, host, disks FROM sim_domains"):
        system = next(d for d in json.loads(disks)["disks"] if d["role"] == "system")
        found[name] = (host, system["backing"])
    return found


def test_a_patch_travels_from_hq_to_the_hosts_of_a_site(tmp_path, monkeypatch, qemu):
    edge = tmp_path / "edge"
    for host in HOSTS:
        (edge / host).mkdir(parents=True)
    monkeypatch.setenv("GOLDFLEET_HOME", str(tmp_path / "unused"))
    hq, site = start_servers(
        tmp_path, {"hq": "hq", "site": "site"}, env={"GOLDFLEET_EDGE_ROOT": str(edge)}
    )
    try:
        setup_site(hq, site, hq.url, tmp_path)
        first = site.client().post("/site/sync", {})
        assert first["versions_added"] == {"base": [1]}
        made = site.client().post("/clones", {"template": "base", "count": 4, "wait": True})
        assert made["operation"]["status"] == "done"
        (v1,) = [v["top_layer"] for v in hq.client().get("/templates/base/versions")]
        for host in HOSTS:  # placed on both hosts, each with its own copy of v1
            assert edge_files(edge, host) == {layer_path(hq, v1).name}

        # HQ patches 64 KiB: the site pulls exactly the new layer, nothing of v1
        new_version(hq, qemu, MiB, os.urandom(64 * 1024))
        v2 = hq.client().get("/templates/base/versions")[-1]["top_layer"]
        size2 = layer_path(hq, v2).stat().st_size
        assert size2 < layer_path(hq, v1).stat().st_size
        delta = site.client().post("/site/sync", {})
        assert delta["versions_added"] == {"base": [2]} and delta["activated"] == {"base": 2}
        assert delta["bytes_downloaded"] == size2 and delta["layers_downloaded"] == 1

        # the site's rollout copies that layer to each host, then rebuilds the clones there
        op = site.client().post("/clones/recreate", {"template": "base", "wait": True})
        assert op["status"] == "done" and op["done"] == 4, op
        for host in HOSTS:
            assert edge_files(edge, host) == {layer_path(hq, v1).name, layer_path(hq, v2).name}
            copy = edge / host / "layers" / layer_path(hq, v2).name
            assert copy.read_bytes() == layer_path(hq, v2).read_bytes()
        vms = declared(site)
        assert sorted(host for host, _ in vms.values()) == sorted(HOSTS * 2)
        for host, backing in vms.values():
            assert backing == [
                str(edge / host / "layers" / layer_path(hq, d).name) for d in (v2, v1)
            ]
        for c in site.client().get("/clones"):
            assert c["version"] == 2

        # HQ sees both versions verified there, v2 current
        r = cli(hq.home, "site", "list", "--json")
        states = json.loads(r.stdout)[0]["states"]
        assert states["base:v1"]["state"] == states["base:v2"]["state"] == "verified"
        assert states["base:v2"]["current"] is True and states["base:v1"]["current"] is False
    finally:
        hq.stop()
        site.stop()
