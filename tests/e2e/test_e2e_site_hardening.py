"""HQ's side of the site endpoints against a site that does not play by the rules: a crafted
publish that reaches for another template's layers, reports on what the site was not given,
and a layer whose file is gone from HQ's store. HQ and a site as two real servers."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sitekit import MiB, layer_path, make_raw, new_version, running, setup_site

from goldfleet.cli.client import Client, ClientError
from goldfleet.services import distribution

pytestmark = pytest.mark.slow


@pytest.fixture
def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    monkeypatch.setenv("GOLDFLEET_HOME", str(tmp_path / "unused"))
    with running(tmp_path, {"hq": "hq", "site": "site"}) as made:
        yield made[0], made[1]


def _versions(srv: Any, template: str = "base") -> list[dict]:
    return srv.client().get(f"/templates/{template}/versions")


def _layer(hq: Any, digest: str, parent: str | None, included: bool = False) -> dict:
    """A manifest entry of a layer HQ holds, with a declared ``parent`` (true or not)."""
    size = layer_path(hq, digest).stat().st_size
    return {
        "digest": digest,
        "parent": parent,
        "size": size,
        "virtual_size": 16 * MiB,
        "included": included,
    }


def _crafted(site: Any, versions: list[tuple[int, str]], layers: list[dict]) -> bytes:
    """A publish bundle of template base written by hand, signed with the site's own key as
    ``template publish`` signs it; it carries no layer bytes."""
    manifest = {
        "format": distribution.FORMAT,
        "template": "base",
        "kind": "linked",
        "outline": {"temp": [], "data": []},
        "current": max(n for n, _ in versions),
        "since": None,
        "policy_only": False,
        "versions": [{"number": n, "top_layer": top, "note": ""} for n, top in versions],
        "layers": layers,
    }
    body = json.dumps(manifest).encode()
    key = distribution.signing_key(SimpleNamespace(settings=SimpleNamespace(home=site.home)))  # type: ignore[arg-type]
    out = io.BytesIO()
    distribution.write_bundle(distribution.ExportPlan(body, distribution.sign(key, body), []), out)
    return out.getvalue()


def test_a_publish_cannot_reach_another_templates_layers(pair, qemu, tmp_path):
    hq, site = pair
    token = setup_site(hq, site, hq.url, tmp_path)
    hq.client().post("/sites/branch/rights", {"local_patches": True})
    new_version(hq, qemu, MiB, os.urandom(64 * 1024))  # base: b1 <- b2
    other = make_raw(tmp_path / "other.raw", fill={0: os.urandom(MiB)})
    hq.client().upload(
        "/templates/import", other, {"name": "other", "format": "raw", "temp": [], "data": []}
    )
    new_version(hq, qemu, MiB, os.urandom(64 * 1024), template="other")  # other: o1 <- o2
    b1, b2 = (v["top_layer"] for v in _versions(hq))
    o1, o2 = (v["top_layer"] for v in _versions(hq, "other"))
    assert site.client().post("/site/sync", {})["versions_added"] == {"base": [1, 2]}
    as_site = Client(hq.url, token)

    # the plan answers only for the layers of base's versions: no probing HQ's whole store
    plan = as_site.post("/sync/publish/base/plan", {"digests": [o1, o2, b1, b2]})
    assert plan["held_layers"] == [b1, b2]

    def refused(versions: list[tuple[int, str]], layers: list[dict]) -> ClientError:
        with pytest.raises(ClientError) as info:
            as_site.post(
                "/sync/publish/base",
                content=_crafted(site, versions, layers),
                headers={"Content-Type": "application/x-tar"},
            )
        return info.value

    # a "v3" of base whose top layer is other's, listed alone or with its true parent
    for layers in ([_layer(hq, o2, None)], [_layer(hq, o1, None), _layer(hq, o2, o1)]):
        err = refused([(3, o2)], layers)
        assert err.status == 403, err.message
        assert f"layer {layers[0]['digest']} is not in a version of template base" in err.message
    # a layer of base with a parent other than HQ's
    err = refused([(3, b2)], [_layer(hq, b2, None)])
    assert err.status == 422 and f"declares parent None for layer {b2}" in err.message
    assert b1 in err.message
    # not one new version above HQ's newest
    err = refused([(2, b2)], [_layer(hq, b1, None), _layer(hq, b2, b1)])
    assert err.status == 409 and "above v2, HQ's newest" in err.message
    err = refused([(3, b1), (4, b2)], [_layer(hq, b1, None), _layer(hq, b2, b1)])
    assert err.status == 422 and "exactly one version" in err.message

    # nothing was added, and other's layers are not served to this site
    assert [v["number"] for v in _versions(hq)] == [1, 2]
    assert hq.client().get("/templates/base")["current_version"] == 2
    assert not [e for e in hq.client().get("/audit") if e["action"] == "site.publish"]
    for digest in (o1, o2):
        with pytest.raises(ClientError) as info:
            as_site.get(f"/sync/layers/{digest}")
        assert info.value.status == 404
    assert as_site.get("/sync/catalog")["templates"][0]["template"] == "base"


def test_reports_hold_only_what_the_site_was_given(pair, tmp_path):
    hq, site = pair
    token = setup_site(hq, site, hq.url, tmp_path)
    hq.client().upload(
        "/templates/import",
        make_raw(tmp_path / "other.raw", fill={0: b"x"}),
        {"name": "other", "format": "raw", "temp": [], "data": []},
    )
    hq.client().post(
        "/sites/branch/templates", {"template": "base", "activate": "when-all-verified"}
    )
    as_site = Client(hq.url, token)
    ok = {"state": "verified", "done": 1, "total": 1}
    as_site.post(
        "/sync/report",
        {
            "states": {
                "base:v1": {**ok, "reason": "r" * 5000},
                "base:v2": ok,  # not at HQ (yet): it must not count once v2 exists
                "other:v1": ok,  # not assigned to this site
                "gone:v1": ok,
            }
        },
    )
    shown = next(x for x in hq.client().get("/sites") if x["name"] == "branch")["states"]
    assert list(shown) == ["base:v1"]
    assert len(shown["base:v1"]["reason"]) == 2000

    for states in (
        {"base": ok},
        {"base:v0": ok},
        {"../x:v1": ok},
        {f"base:v{n}": ok for n in range(1, 10_002)},
    ):
        with pytest.raises(ClientError) as info:
            as_site.post("/sync/report", {"states": states})
        assert info.value.status == 422, list(states)[:1]
    shown = next(x for x in hq.client().get("/sites") if x["name"] == "branch")["states"]
    assert list(shown) == ["base:v1"]


def test_a_layer_file_gone_from_hqs_store_is_named(pair, tmp_path):
    hq, site = pair
    token = setup_site(hq, site, hq.url, tmp_path)
    (v1,) = _versions(hq)
    layer_path(hq, v1["top_layer"]).unlink()
    with pytest.raises(ClientError) as info:
        Client(hq.url, token).get(f"/sync/layers/{v1['top_layer']}")
    assert info.value.status == 500
    assert f"layer {v1['top_layer']}" in info.value.message
    assert "goldfleet store verify" in info.value.message
    log = (hq.home.parent / f"server-{hq.port}.log").read_text()
    assert f"layer {v1['top_layer']}" in log and "goldfleet store verify" in log
    # the site's sync passes HQ's reason on
    r = site.client().post("/site/sync", {})
    assert "HQ answered 500" in r["failed"]["base"]
    assert "goldfleet store verify" in r["failed"]["base"]
