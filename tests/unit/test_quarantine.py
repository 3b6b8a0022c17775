"""The quarantine policy: parsing with line-numbered problems, nq-set's order rule, verdicts."""

from __future__ import annotations

import os
import stat
import textwrap

import pytest

from goldfleet.domain import quarantine as q
from goldfleet.errors import InvalidInput

GOOD = textwrap.dedent(
    """\
    kind = "version"
    threshold = "2026-10"
    restricted_message = "This desktop is restricted until it is patched."
    unanswered = "restricted"

    [update_available_message]
    enabled = true
    text = "A newer patch level is available."

    [restricted_access]
    dhcp = true
    dns = true
    allow = ["10.0.0.5:443", "192.168.7.0/24", "[2001:db8::1]:8080", "10.0.0.9:514/udp"]

    [[versions]]
    name = "2026-09"
    description = "September patches"
    descriptor = "0x0000a001"

    [[versions]]
    name = "2026-10"

    [[versions]]
    name = "2026-11"
    descriptor = "nov-2026"
    """
)


def problems(text: str, **kw) -> list[q.Problem]:
    with pytest.raises(q.PolicyError) as info:
        q.parse_policy(text, **kw)
    return info.value.problems


def test_a_good_policy_parses_with_generated_descriptors():
    p = q.parse_policy(GOOD)
    assert p.kind is q.Kind.VERSION
    assert [v.name for v in p.versions] == ["2026-09", "2026-10", "2026-11"]
    assert p.versions[0].descriptor == "0x0000a001"
    generated = p.versions[1].descriptor
    assert generated == q.generated_descriptor("2026-10")
    assert generated.startswith("0x") and len(generated) == 10
    int(generated, 16)
    assert p.threshold_index == 1
    assert [str(e) for e in p.allow] == [
        "10.0.0.5:443",
        "192.168.7.0/24",
        "[2001:db8::1]:8080",
        "10.0.0.9:514/udp",
    ]
    assert p.unanswered is q.Access.RESTRICTED
    assert p.update_message_enabled and p.update_message.startswith("A newer")


def test_defaults_fail_closed():
    p = q.parse_policy('threshold = "a"\n[[versions]]\nname = "a"\n')
    assert p.unanswered is q.Access.RESTRICTED
    assert p.allow_dhcp and p.allow_dns and p.allow == ()


def test_duplicate_descriptor_is_reported_on_its_line():
    text = GOOD.replace('descriptor = "nov-2026"', 'descriptor = "0x0000a001"')
    found = problems(text)
    assert len(found) == 1
    line = text.splitlines()[found[0].line - 1]
    assert 'descriptor = "0x0000a001"' in line and found[0].line == len(text.splitlines())
    assert "duplicate descriptor" in found[0].message and "2026-09" in found[0].message


def test_threshold_naming_no_version_is_reported_on_its_line():
    found = problems(GOOD.replace('threshold = "2026-10"', 'threshold = "2027-01"'))
    assert [p.line for p in found] == [2]
    assert "names no version" in found[0].message and "2026-11" in found[0].message


def test_every_problem_is_reported_at_once_in_line_order():
    text = textwrap.dedent(
        """\
        kind = "version"
        threshold = "zz"
        colour = "blue"
        [restricted_access]
        allow = ["not-an-address", "10.0.0.1:99999"]
        [[versions]]
        name = "a"
        [[versions]]
        name = "a"
        """
    )
    found = problems(text)
    assert [p.line for p in found] == [2, 3, 5, 5, 9]
    assert "used twice" in found[-1].message


def test_empty_list_and_not_toml():
    assert "at least one" in problems('threshold = "a"\n')[0].message
    found = problems('threshold = "a"\n[[versions]\n')
    assert found[0].line == 2 and "not TOML" in found[0].message


def test_custom_policy_needs_an_executable_plugin(tmp_path):
    plugin = tmp_path / "judge"
    text = f'kind = "custom"\n[plugin]\npath = "{plugin}"\ntimeout_s = 2\n'
    assert "is missing" in problems(text)[0].message
    plugin.write_text("#!/bin/sh\nexit 0\n")
    found = problems(text)
    assert found[0].line == 3 and "not executable" in found[0].message
    plugin.chmod(plugin.stat().st_mode | stat.S_IXUSR)
    p = q.parse_policy(text)
    assert p.kind is q.Kind.CUSTOM and p.plugin == q.Plugin(str(plugin), 2.0)
    # the server validates a policy whose plug-in lives where the server runs
    assert q.parse_policy(text.replace(str(plugin), "/nowhere/judge"), check_plugin=False)
    assert "custom policy needs [plugin]" in problems('kind = "custom"\n')[0].message
    bad_timeout = text.replace("timeout_s = 2", "timeout_s = 0")
    assert "timeout_s" in problems(bad_timeout)[0].message
    assert os.access(plugin, os.X_OK)


@pytest.mark.parametrize(
    ("text", "network", "port", "proto"),
    [
        ("10.0.0.5", "10.0.0.5/32", None, "tcp"),
        ("10.0.0.5:443", "10.0.0.5/32", 443, "tcp"),
        ("10.0.0.0/8:53/udp", "10.0.0.0/8", 53, "udp"),
        ("2001:db8::1", "2001:db8::1/128", None, "tcp"),
        ("[2001:db8::1]:80", "2001:db8::1/128", 80, "tcp"),
    ],
)
def test_endpoints(text, network, port, proto):
    e = q.parse_endpoint(text)
    assert (e.network, e.port, e.protocol) == (network, port, proto)


@pytest.mark.parametrize("text", ["updates.example.com:443", "10.0.0.1:0", "[::1", "10.0.0.1:x"])
def test_bad_endpoints(text):
    with pytest.raises(InvalidInput):
        q.parse_endpoint(text)


def test_nq_set_applies_updates_in_order():
    p = q.parse_policy(GOOD)
    d1, d2, d3 = (v.descriptor for v in p.versions)
    q.check_nq_set(p, None, d1)
    q.check_nq_set(p, d1, d2)
    q.check_nq_set(p, d2, d3)
    q.check_nq_set(p, d2, d2)  # setting again what it holds changes nothing
    with pytest.raises(InvalidInput, match="not the next version"):
        q.check_nq_set(p, d1, d3)
    with pytest.raises(InvalidInput, match="not the next version"):
        q.check_nq_set(p, d3, d2)  # no going back
    with pytest.raises(InvalidInput, match="not in the policy"):
        q.check_nq_set(p, d1, "0xdeadbeef")
    with pytest.raises(InvalidInput, match="not valid"):
        q.check_nq_set(p, d1, "two words")
    assert q.next_allowed(p, "garbage") == d1
    assert q.next_allowed(p, d3) is None


def test_verdicts():
    p = q.parse_policy(GOOD)
    d1, d2, d3 = (v.descriptor for v in p.versions)
    below = q.evaluate(p, d1)
    assert below.access is q.Access.RESTRICTED and below.version == "2026-09"
    assert "below the threshold 2026-10" in below.reason
    at = q.evaluate(p, d2)
    assert at.access is q.Access.NORMAL and at.update_available
    newest = q.evaluate(p, d3)
    assert newest.access is q.Access.NORMAL and not newest.update_available
    assert q.evaluate(p, "0xffffffff").access is q.Access.RESTRICTED
    assert q.evaluate(p, None).reason == "the guest holds no descriptor"
    assert q.evaluate(p, "\x00\x01garbage").reason == "the descriptor file holds garbage"
    silent = q.evaluate(p, d3, answered=False)
    assert silent.access is q.Access.RESTRICTED and "did not answer" in silent.reason
    open_policy = q.parse_policy(GOOD.replace('unanswered = "restricted"', 'unanswered = "normal"'))
    assert q.evaluate(open_policy, None, answered=False).access is q.Access.NORMAL


def test_messages_follow_the_verdict():
    p = q.parse_policy(GOOD)
    d1, d2, d3 = (v.descriptor for v in p.versions)
    assert q.message_for(p, q.evaluate(p, d1)) == p.restricted_message
    assert q.message_for(p, q.evaluate(p, d2)) == p.update_message
    assert q.message_for(p, q.evaluate(p, d3)) is None


def test_custom_verdicts_from_the_plugin():
    assert q.plugin_verdict(0).access is q.Access.NORMAL
    assert q.plugin_verdict(1).access is q.Access.RESTRICTED
    crashed = q.plugin_verdict(139)
    assert crashed.access is q.Access.RESTRICTED and "exit 139" in crashed.reason
    hung = q.plugin_verdict(None, "no answer within 2 s")
    assert hung.access is q.Access.RESTRICTED and "no answer" in hung.reason


def test_guest_policy_text_lists_versions_in_order():
    p = q.parse_policy(GOOD)
    text = q.guest_policy_text(p)
    assert text.splitlines()[1:] == [
        "kind version",
        "version 0x0000a001 2026-09",
        f"version {p.versions[1].descriptor} 2026-10",
        "version nov-2026 2026-11",
    ]
