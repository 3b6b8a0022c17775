"""libvirt network filters (nwfilter) for version-based quarantine, from a policy.

Each template with a quarantine policy has two filters; a clone's interface references one of
them (``<filterref filter='…'/>``) and goldfleet switches it live when the clone's access
changes:

- ``goldfleet-normal-TEMPLATE`` accepts everything (IPv4 and IPv6);
- ``goldfleet-restricted-TEMPLATE`` accepts DHCP and DNS when the policy allows them, the
  policy's addresses (and ports), and drops everything else. Rules are stateful (libvirt's
  default): an accepted outgoing connection's replies come back; nothing may connect in.

The XML is built from typed values (no user string is pasted into markup); the golden files in
tests/drivers/golden/ are what libvirt receives.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from goldfleet.domain.quarantine import Endpoint, Policy

PREFIX = "goldfleet"
# priorities: lower runs first (libvirt: -1000…1000); the final drop comes last
DHCP, DNS, ALLOW, DROP = 100, 110, 200, 1000


def filter_name(template: str, access: str) -> str:
    """``goldfleet-normal-desk`` / ``goldfleet-restricted-desk``."""
    return f"{PREFIX}-{access}-{template}"


@dataclass(frozen=True, slots=True)
class FilterXML:
    name: str
    rules: tuple[ET.Element, ...]

    def to_xml(self) -> str:
        root = ET.Element("filter", name=self.name, chain="root")
        for rule in self.rules:
            root.append(rule)
        ET.indent(root, space="  ")
        return ET.tostring(root, encoding="unicode") + "\n"


def _rule(action: str, direction: str, priority: int, proto: str, **attrs: str) -> ET.Element:
    rule = ET.Element("rule", action=action, direction=direction, priority=str(priority))
    ET.SubElement(rule, proto, **attrs)
    return rule


def normal_filter(template: str) -> FilterXML:
    return FilterXML(
        filter_name(template, "normal"),
        (
            _rule("accept", "inout", DROP, "all"),
            _rule("accept", "inout", DROP, "all-ipv6"),
        ),
    )


def _endpoint_rules(e: Endpoint) -> list[ET.Element]:
    proto = e.protocol + ("-ipv6" if e.is_ipv6 else "")
    attrs = {"dstipaddr": e.address, "dstipmask": str(e.prefix)}
    if e.port is not None:
        attrs["dstportstart"] = str(e.port)
        return [_rule("accept", "out", ALLOW, proto, **attrs)]
    # an address without a port: any protocol to it
    return [_rule("accept", "out", ALLOW, "all-ipv6" if e.is_ipv6 else "all", **attrs)]


def restricted_filter(template: str, policy: Policy) -> FilterXML:
    rules: list[ET.Element] = []
    if policy.allow_dhcp:
        rules += [
            _rule("accept", "out", DHCP, "udp", srcportstart="68", dstportstart="67"),
            _rule("accept", "in", DHCP, "udp", srcportstart="67", dstportstart="68"),
            _rule("accept", "out", DHCP, "udp-ipv6", srcportstart="546", dstportstart="547"),
            _rule("accept", "in", DHCP, "udp-ipv6", srcportstart="547", dstportstart="546"),
        ]
    if policy.allow_dns:
        for proto in ("udp", "tcp", "udp-ipv6", "tcp-ipv6"):
            rules.append(_rule("accept", "out", DNS, proto, dstportstart="53"))
    for endpoint in policy.allow:
        rules += _endpoint_rules(endpoint)
    rules += [_rule("drop", "inout", DROP, "all"), _rule("drop", "inout", DROP, "all-ipv6")]
    return FilterXML(filter_name(template, "restricted"), tuple(rules))
