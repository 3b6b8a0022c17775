"""Listing clones through the real API and CLI: filters applied by the server, keyset paging
with a ``Link: rel="next"`` header, the old unpaged answer kept, and arguments refused."""

from __future__ import annotations

import re

import pytest

from goldfleet.cli.client import Client

MiB = 1 << 20


@pytest.fixture
def mixed(fleet, template) -> dict[str, dict]:
    """base-001…004 on v1 (base-002 running), then v2 and base-005…006 on it; other-001…002
    of a second template. Returns every clone by name, as the unfiltered list shows it."""
    fleet.create(count=4)
    fleet.client.post("/clones/base-002/start")
    fleet.update(byte=0x22)  # v2 becomes current; the clones stay on v1
    fleet.create(count=2)
    fleet.import_template("other", {0: b"\x33" * 4096})
    fleet.create(count=2, template="other")
    everything = fleet.client.get("/clones")
    return {c["name"]: c for c in everything}


def names(items: list[dict]) -> list[str]:
    return [c["name"] for c in items]


def test_the_unpaged_list_is_every_clone_in_name_order(fleet, mixed):
    assert list(mixed) == [
        "base-001",
        "base-002",
        "base-003",
        "base-004",
        "base-005",
        "base-006",
        "other-001",
        "other-002",
    ]
    assert [mixed[n]["version"] for n in ("base-001", "base-005", "other-001")] == [1, 2, 1]
    shown = fleet.show("base-003")
    assert {k: v for k, v in shown.items() if k != "volumes"} == {
        k: v for k, v in mixed["base-003"].items() if k != "volumes"
    }
    # the query string of old clients still works, and an unknown template is still a 404
    assert names(fleet.client.get("/clones", params={"template": "other"})) == [
        "other-001",
        "other-002",
    ]
    assert "nosuch" in fleet.error(404, fleet.client.get, "/clones", params={"template": "nosuch"})


def test_filters_are_applied_by_the_server_and_combine(fleet, mixed):
    def listed(**params: object) -> list[str]:
        return names(fleet.client.get("/clones", params=params))

    assert listed(state="running") == ["base-002"]
    assert listed(state="stopped") == [n for n in mixed if n != "base-002"]
    assert listed(state="ready") == list(mixed)
    assert listed(state="failed") == []
    assert listed(version=2) == ["base-005", "base-006"]
    on_v1 = ["base-001", "base-002", "base-003", "base-004", "other-001", "other-002"]
    assert listed(version=1) == on_v1  # of every template
    assert listed(template="base", version=1) == ["base-001", "base-002", "base-003", "base-004"]
    assert listed(template="other", version=2) == []
    hosts = dict(fleet.rows("SELECT name, host FROM clones"))
    assert None not in hosts.values() and len(set(hosts.values())) == 2  # the two sim hosts
    for host in set(hosts.values()):
        assert listed(host=host) == sorted(n for n, h in hosts.items() if h == host)
    assert listed(host="no-such-host") == []
    host = hosts["base-002"]
    assert listed(host=host, state="running", template="base", version=1) == ["base-002"]


def test_pages_follow_the_link_header_to_the_whole_filtered_list(fleet, mixed):
    http = fleet.client.http
    resp = http.get("/clones", params={"limit": 3})
    assert resp.status_code == 200
    assert names(resp.json()) == ["base-001", "base-002", "base-003"]
    link = resp.headers["link"]
    assert re.fullmatch(r'</clones\?[^>]*after=base-003[^>]*>; rel="next"', link), link

    pages, url, params = [], "/clones", {"limit": 3, "template": "base"}
    while url is not None:
        resp = http.get(url, params=params)
        assert resp.status_code == 200, resp.text
        pages.append(names(resp.json()))
        url, params = resp.links.get("next", {}).get("url"), None
    # the filter rides along in every next link; the last page names no next one
    assert pages == [["base-001", "base-002", "base-003"], ["base-004", "base-005", "base-006"]]
    assert "link" not in resp.headers

    # the client's paging (what `clone list` uses) gives what one unpaged answer gives
    assert fleet.client.get_pages("/clones", {"limit": 2}) == list(mixed.values())
    assert fleet.client.get_pages("/clones", {"limit": 2, "state": "stopped"}) == [
        c for c in mixed.values() if c["name"] != "base-002"
    ]
    # a page that exactly ends the list names no next one
    last = http.get("/clones", params={"limit": 2, "after": "base-006"})
    assert names(last.json()) == ["other-001", "other-002"] and "link" not in last.headers


def test_a_page_does_not_shift_when_clones_before_it_go(fleet, mixed):
    first = fleet.client.http.get("/clones", params={"limit": 4})
    fleet.client.delete("/clones/base-001")
    fleet.client.delete("/clones/base-003")
    second = fleet.client.http.get(first.links["next"]["url"])
    assert names(second.json()) == ["base-005", "base-006", "other-001", "other-002"]


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"state": "asleep"}, "ready"),
        ({"version": 0}, "version"),
        ({"version": "v2"}, "version"),
        ({"after": "Not A Name"}, "clone name"),
        ({"template": "Bad Name"}, "template name"),
        ({"host": "h" * 256}, "host"),
    ],
)
def test_bad_list_arguments_are_refused(fleet, template, params, says):
    message = fleet.error(422, fleet.client.get, "/clones", params=params)
    assert says in message


def test_a_reader_token_may_list_and_page(fleet, mixed):
    token = fleet.client.post("/tokens", {"name": "viewer", "role": "reader"})["token"]
    reader = Client(fleet.server.url, token)
    assert reader.get_pages("/clones", {"limit": 5, "template": "other"}) == [
        mixed["other-001"],
        mixed["other-002"],
    ]


def test_cli_clone_list_filters_and_prints_every_match(fleet, mixed):
    assert fleet.cli_json("clone", "list") == list(mixed.values())
    assert names(fleet.cli_json("clone", "list", "--state", "running")) == ["base-002"]
    assert names(fleet.cli_json("clone", "list", "--template", "base", "--version", "v2")) == [
        "base-005",
        "base-006",
    ]
    host = dict(fleet.rows("SELECT name, host FROM clones"))["other-002"]
    on_host = fleet.cli_json("clone", "list", "--host", host, "--template", "other")
    assert "other-002" in names(on_host) and all(c["template"] == "other" for c in on_host)
    table = fleet.cli("clone", "list", "--state", "running")
    assert table.returncode == 0 and "base-002" in table.stdout and "base-001" not in table.stdout


def test_cli_clone_list_refuses_bad_arguments_in_one_line(fleet, template):
    proc = fleet.cli("clone", "list", "--state", "asleep")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and "running" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = fleet.cli("clone", "list", "--version", "latest")
    assert proc.returncode == 1 and "version 'latest' is not valid" in proc.stderr
    assert "Traceback" not in proc.stderr
