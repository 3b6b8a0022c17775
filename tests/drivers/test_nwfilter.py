"""The quarantine's network filters: golden files of the XML libvirt receives, and the rules
behind them. test_libvirt_nwfilter.py hands them to a real libvirt nwfilter driver."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from goldfleet.domain import quarantine as q
from goldfleet.drivers import nwfilter

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("GOLDFLEET_REGEN_GOLDEN") == "1"

POLICY = q.parse_policy(
    """\
threshold = "b"
[restricted_access]
allow = ["10.0.0.5:443", "192.168.7.0/24", "[2001:db8::1]:8080", "10.0.0.9:514/udp"]
[[versions]]
name = "a"
[[versions]]
name = "b"
"""
)
CLOSED = q.parse_policy(
    'threshold = "a"\n[restricted_access]\ndhcp = false\ndns = false\n[[versions]]\nname = "a"\n'
)
CASES = {
    "nwfilter_normal": nwfilter.normal_filter("desk"),
    "nwfilter_restricted": nwfilter.restricted_filter("desk", POLICY),
    "nwfilter_restricted_closed": nwfilter.restricted_filter("desk", CLOSED),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_golden_file(case: str) -> None:
    xml = CASES[case].to_xml()
    path = GOLDEN / f"{case}.xml"
    if REGEN:
        path.write_text(xml)
    assert path.exists(), f"{path} is missing: run with GOLDFLEET_REGEN_GOLDEN=1"
    assert xml == path.read_text()


def _rules(xml: str) -> list[tuple[str, str, str, dict[str, str]]]:
    return [
        (r.get("action"), r.get("direction"), r[0].tag, dict(r[0].attrib))
        for r in ET.fromstring(xml).findall("rule")
    ]


def test_restricted_ends_in_a_drop_of_everything_and_lets_out_only_what_is_listed() -> None:
    rules = _rules(CASES["nwfilter_restricted"].to_xml())
    assert rules[-2:] == [("drop", "inout", "all", {}), ("drop", "inout", "all-ipv6", {})]
    accepted = [r for r in rules if r[0] == "accept"]
    assert all(r[1] in ("out", "in") for r in accepted)
    # in: only DHCP answers; everything else inbound is a reply to what went out (stateful)
    assert [r[3] for r in accepted if r[1] == "in"] == [
        {"srcportstart": "67", "dstportstart": "68"},
        {"srcportstart": "547", "dstportstart": "546"},
    ]
    assert (
        "accept",
        "out",
        "tcp",
        {"dstipaddr": "10.0.0.5", "dstipmask": "32", "dstportstart": "443"},
    ) in rules
    assert ("accept", "out", "all", {"dstipaddr": "192.168.7.0", "dstipmask": "24"}) in rules
    assert (
        "accept",
        "out",
        "tcp-ipv6",
        {"dstipaddr": "2001:db8::1", "dstipmask": "128", "dstportstart": "8080"},
    ) in rules
    assert (
        "accept",
        "out",
        "udp",
        {"dstipaddr": "10.0.0.9", "dstipmask": "32", "dstportstart": "514"},
    ) in rules


def test_closed_policy_lets_nothing_out() -> None:
    rules = _rules(CASES["nwfilter_restricted_closed"].to_xml())
    assert [r[0] for r in rules] == ["drop", "drop"]


def test_names() -> None:
    assert nwfilter.filter_name("desk", "restricted") == "goldfleet-restricted-desk"
    assert ET.fromstring(CASES["nwfilter_normal"].to_xml()).get("name") == "goldfleet-normal-desk"
