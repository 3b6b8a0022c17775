"""Version-based network quarantine (VMware ACE's model), as rules without I/O.

A *policy* belongs to a template. It lists the guest's patch levels in order, each with a
*descriptor*: the string the guest holds (``goldfleet-guest nq-set``) to say which level it is
at. The *threshold* is the first version with normal network access; a clone below it, or
whose descriptor the policy does not know, is *restricted*: it may reach only DHCP, DNS and
the addresses the policy lists. A *custom* policy has no versions: a plug-in executable judges
the descriptor string (exit 0 normal, 1 restricted; anything else, or no answer in time, is
restricted).

The policy is a TOML file; :func:`parse_policy` reports every problem with its line, so that
``goldfleet compliance validate FILE`` can print them all at once.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from goldfleet.errors import InvalidInput

DESCRIPTOR_RE = re.compile(r"^[A-Za-z0-9._:+-]{1,64}$")
"""A version descriptor: what the guest tool stores and matches (safe in a file and a shell)."""
CUSTOM_DESCRIPTOR_MAX = 256
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MAX_VERSIONS = 1000
MAX_ALLOW = 64
MAX_MESSAGE = 500
DEFAULT_PLUGIN_TIMEOUT_S = 5.0
MAX_PLUGIN_TIMEOUT_S = 60.0


class Kind(StrEnum):
    VERSION = "version"
    CUSTOM = "custom"


class Access(StrEnum):
    NORMAL = "normal"
    RESTRICTED = "restricted"
    UNKNOWN = "unknown"  # not evaluated yet (not running, never checked)


@dataclass(frozen=True)
class Problem:
    line: int  # 1-based; 0 when the problem is about the whole file
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


class PolicyError(InvalidInput):
    """A policy file with problems; each problem names its line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__(
            "the quarantine policy is not valid:\n" + "\n".join(f"  {p}" for p in problems)
        )


@dataclass(frozen=True)
class Endpoint:
    """An address (or network) and optionally a port and protocol a restricted clone may reach."""

    network: str  # "10.0.0.5/32", "192.168.1.0/24", "2001:db8::1/128"
    port: int | None = None
    protocol: str = "tcp"  # tcp | udp

    @property
    def address(self) -> str:
        return self.network.split("/")[0]

    @property
    def prefix(self) -> int:
        return int(self.network.split("/")[1])

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.address

    def __str__(self) -> str:
        host = self.network if not self.network.endswith(("/32", "/128")) else self.address
        host = f"[{host}]" if self.is_ipv6 and self.port is not None else host
        port = f":{self.port}" if self.port is not None else ""
        proto = f"/{self.protocol}" if self.protocol != "tcp" else ""
        return f"{host}{port}{proto}"


@dataclass(frozen=True)
class QVersion:
    name: str
    descriptor: str
    description: str = ""


@dataclass(frozen=True)
class Plugin:
    path: str
    timeout_s: float = DEFAULT_PLUGIN_TIMEOUT_S


@dataclass(frozen=True)
class Policy:
    kind: Kind
    versions: tuple[QVersion, ...] = ()
    threshold: str | None = None
    restricted_message: str = ""
    update_message_enabled: bool = False
    update_message: str = ""
    allow_dhcp: bool = True
    allow_dns: bool = True
    allow: tuple[Endpoint, ...] = ()
    unanswered: Access = Access.RESTRICTED
    plugin: Plugin | None = None
    _index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update({v.descriptor: i for i, v in enumerate(self.versions)})

    def index_of(self, descriptor: str | None) -> int | None:
        return None if descriptor is None else self._index.get(descriptor)

    def version(self, name: str) -> QVersion:
        for v in self.versions:
            if v.name == name:
                return v
        known = ", ".join(v.name for v in self.versions) or "none"
        raise InvalidInput(f"the policy has no version {name!r} (it has: {known})")

    @property
    def threshold_index(self) -> int:
        for i, v in enumerate(self.versions):
            if v.name == self.threshold:
                return i
        return 0


def generated_descriptor(name: str) -> str:
    """The descriptor of a version that names none: ``0x`` + 8 hex digits, stable per name."""
    return "0x" + hashlib.sha256(name.encode()).hexdigest()[:8]


def parse_endpoint(text: str) -> Endpoint:
    """``ADDR``, ``ADDR:PORT``, ``NET/PREFIX[:PORT]``, ``[V6]:PORT``, each with optional
    ``/udp`` or ``/tcp`` after the port."""
    raw = text.strip()
    protocol = "tcp"
    for proto in ("udp", "tcp"):
        if raw.endswith("/" + proto) and ":" in raw:
            raw, protocol = raw[: -len(proto) - 1], proto
    port: int | None = None
    host = raw
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0:
            raise InvalidInput(f"{text!r}: unclosed [ in an IPv6 address")
        host, rest = raw[1:end], raw[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise InvalidInput(f"{text!r}: expected :PORT after ]")
            port = _port(rest[1:], text)
    elif raw.count(":") == 1:
        host, port_text = raw.split(":")
        port = _port(port_text, text)
    try:
        net = ipaddress.ip_network(host, strict=False)
    except ValueError:
        raise InvalidInput(
            f"{text!r} is not an address or network (write 10.0.0.5, 10.0.0.0/24 or"
            " 10.0.0.5:443; host names are not resolved)"
        ) from None
    return Endpoint(network=str(net), port=port, protocol=protocol)


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise InvalidInput(f"{whole!r}: the port must be a number from 1 to 65535")
    return int(text)


def check_descriptor(value: str, kind: Kind = Kind.VERSION) -> str:
    if kind is Kind.CUSTOM:
        if not value or len(value.encode()) > CUSTOM_DESCRIPTOR_MAX:
            raise InvalidInput(
                f"a custom descriptor is 1 to {CUSTOM_DESCRIPTOR_MAX} bytes, not {len(value)}"
            )
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise InvalidInput("a custom descriptor may not hold control characters")
        return value
    if not DESCRIPTOR_RE.match(value):
        raise InvalidInput(
            f"descriptor {value!r} is not valid: 1 to 64 of letters, digits and . _ : + -"
        )
    return value


class _Lines:
    """Where each key of a TOML text is, by (table, index of an array-of-tables entry, key).

    tomllib gives no positions; admins write policies as plain tables, so a scan of the
    headers and ``key =`` lines places every problem on its line."""

    header = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-]+)\s*\]\]?\s*(#.*)?$")
    key = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*=")

    def __init__(self, text: str) -> None:
        self.where: dict[tuple[str, int | None, str | None], int] = {}
        counts: dict[str, int] = {}
        table: tuple[str, int | None] = ("", None)
        for n, line in enumerate(text.splitlines(), start=1):
            if m := self.header.match(line):
                name = m.group(2)
                if m.group(1) == "[[":
                    i = counts.get(name, 0)
                    counts[name] = i + 1
                    table = (name, i)
                else:
                    table = (name, None)
                self.where.setdefault((*table, None), n)
            elif m := self.key.match(line):
                self.where.setdefault((*table, m.group(1)), n)

    def of(self, table: str = "", index: int | None = None, key: str | None = None) -> int:
        for probe in ((table, index, key), (table, index, None), ("", None, table or key)):
            if probe in self.where:
                return self.where[probe]
        return 0


def parse_policy(text: str, *, check_plugin: bool = True) -> Policy:
    """The policy in ``text``, or :class:`PolicyError` listing every problem with its line.

    ``check_plugin``: a custom policy's plug-in must exist and be executable here (the server
    checks where it runs it; ``compliance validate`` on the admin's machine too)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise PolicyError([Problem(int(m.group(1)) if m else 0, f"not TOML: {exc}")]) from None
    lines = _Lines(text)
    problems: list[Problem] = []

    def bad(message: str, table: str = "", index: int | None = None, key: str | None = None):
        problems.append(Problem(lines.of(table, index, key), message))

    known_top = {
        "kind",
        "threshold",
        "restricted_message",
        "update_available_message",
        "restricted_access",
        "unanswered",
        "versions",
        "plugin",
    }
    for key in data:
        if key not in known_top:
            bad(f"unknown key {key!r} (known: {', '.join(sorted(known_top))})", key=key)

    kind_text = data.get("kind", "version")
    try:
        kind = Kind(kind_text)
    except ValueError:
        bad(f"kind must be 'version' or 'custom', not {kind_text!r}", key="kind")
        kind = Kind.VERSION

    restricted_message = _text(data.get("restricted_message", ""), "restricted_message", bad)
    update_enabled, update_text = False, ""
    uam = data.get("update_available_message", {})
    if isinstance(uam, dict):
        update_enabled = bool(uam.get("enabled", False))
        if not isinstance(uam.get("enabled", False), bool):
            bad("enabled must be true or false", "update_available_message", key="enabled")
        update_text = _text(uam.get("text", ""), "text", bad, "update_available_message")
        if update_enabled and not update_text:
            bad(
                "update_available_message is enabled but has no text",
                "update_available_message",
                key="enabled",
            )
    elif isinstance(uam, bool):
        update_enabled = uam
    else:
        bad(
            "update_available_message is a table with enabled and text",
            key="update_available_message",
        )

    access = data.get("restricted_access", {})
    allow_dhcp, allow_dns, allow = True, True, []
    if not isinstance(access, dict):
        bad("restricted_access must be a table", key="restricted_access")
    else:
        for key in ("dhcp", "dns"):
            if not isinstance(access.get(key, True), bool):
                bad(f"{key} must be true or false", "restricted_access", key=key)
        allow_dhcp = access.get("dhcp", True) is not False
        allow_dns = access.get("dns", True) is not False
        entries = access.get("allow", [])
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            bad('allow is a list of "ADDR[:PORT]" strings', "restricted_access", key="allow")
        elif len(entries) > MAX_ALLOW:
            bad(f"allow lists at most {MAX_ALLOW} entries", "restricted_access", key="allow")
        else:
            for entry in entries:
                try:
                    allow.append(parse_endpoint(entry))
                except InvalidInput as exc:
                    bad(exc.message, "restricted_access", key="allow")

    unanswered_text = data.get("unanswered", "restricted")
    if unanswered_text not in ("restricted", "normal"):
        bad(
            f"unanswered must be 'restricted' or 'normal', not {unanswered_text!r}",
            key="unanswered",
        )
        unanswered_text = "restricted"

    versions: list[QVersion] = []
    raw_versions = data.get("versions", [])
    if not isinstance(raw_versions, list) or not all(isinstance(v, dict) for v in raw_versions):
        bad("versions is an array of tables: [[versions]] with name and descriptor", key="versions")
        raw_versions = []
    if kind is Kind.VERSION and not raw_versions:
        bad("a version-based policy needs at least one [[versions]] entry", key="versions")
    if kind is Kind.CUSTOM and raw_versions:
        bad("a custom policy has no versions: its plug-in judges the descriptor", key="versions")
    if len(raw_versions) > MAX_VERSIONS:
        bad(f"at most {MAX_VERSIONS} versions", key="versions")
        raw_versions = []
    names: dict[str, int] = {}
    descriptors: dict[str, int] = {}
    for i, entry in enumerate(raw_versions):
        for key in entry:
            if key not in ("name", "description", "descriptor"):
                bad(f"unknown key {key!r} in a version", "versions", i, key)
        name = entry.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            bad(
                f"version {i + 1} needs a name of letters, digits, . _ - (got {name!r})",
                "versions",
                i,
                "name",
            )
            continue
        if name in names:
            bad(
                f"version name {name!r} is used twice (also version {names[name] + 1})",
                "versions",
                i,
                "name",
            )
            continue
        names[name] = i
        descriptor = entry.get("descriptor")
        if descriptor is None:
            descriptor = generated_descriptor(name)
        elif not isinstance(descriptor, str) or not DESCRIPTOR_RE.match(descriptor):
            bad(
                f"descriptor {descriptor!r} of {name} is not valid: 1 to 64 of letters, digits"
                " and . _ : + -",
                "versions",
                i,
                "descriptor",
            )
            continue
        if descriptor in descriptors:
            other = raw_versions[descriptors[descriptor]].get("name")
            bad(
                f"duplicate descriptor {descriptor!r}: {name} and {other} cannot be told apart",
                "versions",
                i,
                "descriptor" if "descriptor" in entry else "name",
            )
        descriptors.setdefault(descriptor, i)
        description = _text(entry.get("description", ""), "description", bad, "versions", i)
        versions.append(QVersion(name=name, descriptor=descriptor, description=description))

    threshold = data.get("threshold")
    if kind is Kind.VERSION:
        if threshold is None:
            bad("threshold is missing: name the first version with normal access", key="threshold")
        elif threshold not in names:
            known = ", ".join(names) or "none"
            bad(f"threshold {threshold!r} names no version (versions: {known})", key="threshold")
    elif threshold is not None:
        bad("a custom policy has no threshold: its plug-in judges", key="threshold")

    plugin = None
    raw_plugin = data.get("plugin")
    if kind is Kind.CUSTOM and raw_plugin is None:
        bad("a custom policy needs [plugin] with path (and timeout_s)", key="kind")
    if raw_plugin is not None:
        if kind is Kind.VERSION:
            bad("a version-based policy has no plug-in (kind = 'custom' uses one)", "plugin")
        elif not isinstance(raw_plugin, dict):
            bad("plugin is a table with path and timeout_s", key="plugin")
        else:
            path = raw_plugin.get("path")
            timeout = raw_plugin.get("timeout_s", DEFAULT_PLUGIN_TIMEOUT_S)
            if not isinstance(path, str) or not os.path.isabs(path):
                bad("plugin path must be an absolute path", "plugin", key="path")
            elif check_plugin and not os.path.isfile(path):
                bad(f"plug-in {path} is missing", "plugin", key="path")
            elif check_plugin and not os.access(path, os.X_OK):
                bad(f"plug-in {path} is not executable", "plugin", key="path")
            if (
                not isinstance(timeout, int | float)
                or isinstance(timeout, bool)
                or not 0 < timeout <= MAX_PLUGIN_TIMEOUT_S
            ):
                bad(
                    f"timeout_s must be a number of seconds above 0, at most"
                    f" {MAX_PLUGIN_TIMEOUT_S:g}",
                    "plugin",
                    key="timeout_s",
                )
                timeout = DEFAULT_PLUGIN_TIMEOUT_S
            if isinstance(path, str):
                plugin = Plugin(path=path, timeout_s=float(timeout))

    if problems:
        raise PolicyError(sorted(problems, key=lambda p: p.line))
    return Policy(
        kind=kind,
        versions=tuple(versions),
        threshold=threshold if kind is Kind.VERSION else None,
        restricted_message=restricted_message,
        update_message_enabled=update_enabled,
        update_message=update_text,
        allow_dhcp=allow_dhcp,
        allow_dns=allow_dns,
        allow=tuple(allow),
        unanswered=Access(unanswered_text),
        plugin=plugin,
    )


def _text(value, key, bad, table: str = "", index: int | None = None) -> str:
    if not isinstance(value, str):
        bad(f"{key} must be a string", table, index, key)
        return ""
    if len(value) > MAX_MESSAGE:
        bad(f"{key} is longer than {MAX_MESSAGE} characters", table, index, key)
        return value[:MAX_MESSAGE]
    return value


# --- the guest's side: what nq-set accepts --------------------------------------------------


def next_allowed(policy: Policy, current: str | None) -> str | None:
    """The only new descriptor ``nq-set`` accepts when the guest holds ``current``: the next
    version in the policy's order (updates are applied in order). A guest with no descriptor,
    or one the policy does not know, may set only the first version. ``None``: at the newest."""
    i = policy.index_of(current)
    if i is None:
        return policy.versions[0].descriptor if policy.versions else None
    return policy.versions[i + 1].descriptor if i + 1 < len(policy.versions) else None


def check_nq_set(policy: Policy, current: str | None, new: str) -> None:
    """Whether ``nq-set NEW`` succeeds on a guest at ``current`` (raises with the reason)."""
    check_descriptor(new, policy.kind)
    if policy.kind is Kind.CUSTOM:
        return
    if policy.index_of(new) is None:
        raise InvalidInput(f"descriptor {new} is not in the policy")
    if new == current:
        return
    expected = next_allowed(policy, current)
    if new != expected:
        raise InvalidInput(
            f"descriptor {new} is not the next version"
            + (f" (expected {expected})" if expected else " (already at the newest)")
        )


# --- goldfleet's side: the verdict for one clone ---------------------------------------------


@dataclass(frozen=True)
class Verdict:
    access: Access
    version: str | None  # the policy version the descriptor names, when known
    reason: str
    update_available: bool = False


def evaluate(
    policy: Policy,
    descriptor: str | None,
    *,
    answered: bool = True,
    plugin_exit: int | None = None,
    plugin_problem: str | None = None,
) -> Verdict:
    """The access of one running clone.

    ``answered``: whether its guest agent answered (a clone that does not answer gets
    ``policy.unanswered``, restricted by default: fail closed). ``descriptor``: what its
    descriptor file holds (``None``: no file). For a custom policy the caller ran the plug-in:
    ``plugin_exit`` its exit status, ``plugin_problem`` why it gave none (timeout, crash)."""
    if not answered:
        return Verdict(policy.unanswered, None, "the guest agent did not answer")
    if descriptor is None:
        return Verdict(Access.RESTRICTED, None, "the guest holds no descriptor")
    try:
        check_descriptor(descriptor, policy.kind)
    except InvalidInput:
        return Verdict(Access.RESTRICTED, None, "the descriptor file holds garbage")
    if policy.kind is Kind.CUSTOM:
        return plugin_verdict(plugin_exit, plugin_problem)
    i = policy.index_of(descriptor)
    if i is None:
        return Verdict(Access.RESTRICTED, None, f"descriptor {descriptor} is not in the policy")
    v = policy.versions[i]
    newest = policy.versions[-1].name
    if i < policy.threshold_index:
        return Verdict(
            Access.RESTRICTED,
            v.name,
            f"version {v.name} is below the threshold {policy.threshold}",
            update_available=True,
        )
    behind = i < len(policy.versions) - 1
    reason = f"version {v.name}" + (f" (newest is {newest})" if behind else " is the newest")
    return Verdict(Access.NORMAL, v.name, reason, update_available=behind)


def plugin_verdict(exit_status: int | None, problem: str | None = None) -> Verdict:
    if problem:
        return Verdict(Access.RESTRICTED, None, f"plug-in: {problem}")
    if exit_status == 0:
        return Verdict(Access.NORMAL, None, "the plug-in judged it normal (exit 0)")
    if exit_status == 1:
        return Verdict(Access.RESTRICTED, None, "the plug-in judged it restricted (exit 1)")
    return Verdict(Access.RESTRICTED, None, f"the plug-in failed (exit {exit_status})")


def message_for(policy: Policy, verdict: Verdict) -> str | None:
    """What the clone's users are told when its verdict changes (not at every evaluation)."""
    if verdict.access is Access.RESTRICTED and policy.restricted_message:
        return policy.restricted_message
    if (
        verdict.access is Access.NORMAL
        and verdict.update_available
        and policy.update_message_enabled
    ):
        return policy.update_message
    return None


def guest_policy_text(policy: Policy) -> str:
    """The policy file goldfleet writes into a guest, read by ``goldfleet-guest``: one line
    ``kind K``, then one ``version DESCRIPTOR NAME`` per version in order (a line format a
    POSIX shell reads without a TOML parser)."""
    lines = [
        "# written by goldfleet: the quarantine policy's versions, in order",
        f"kind {policy.kind}",
    ]
    lines += [f"version {v.descriptor} {v.name}" for v in policy.versions]
    return "\n".join(lines) + "\n"


def parse_guest_policy(text: str) -> Policy:
    """The policy as a guest sees it, from :func:`guest_policy_text`'s format (what the sim's
    model of the guest tool reads, as the shell tool does)."""
    kind = Kind.VERSION
    versions = []
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "kind" and words[1] in tuple(Kind):
            kind = Kind(words[1])
        elif len(words) >= 2 and words[0] == "version":
            name = words[2] if len(words) > 2 else words[1]
            versions.append(QVersion(name=name, descriptor=words[1]))
    return Policy(kind=kind, versions=tuple(versions), threshold=None)


def policy_json(policy: Policy) -> dict[str, Any]:
    """The policy as JSON: what `compliance validate --json` prints and the API shows."""
    return {
        "kind": str(policy.kind),
        "threshold": policy.threshold,
        "versions": [
            {"name": v.name, "descriptor": v.descriptor, "description": v.description}
            for v in policy.versions
        ],
        "restricted_message": policy.restricted_message,
        "update_available_message": {
            "enabled": policy.update_message_enabled,
            "text": policy.update_message,
        },
        "restricted_access": {
            "dhcp": policy.allow_dhcp,
            "dns": policy.allow_dns,
            "allow": [str(e) for e in policy.allow],
        },
        "unanswered": str(policy.unanswered),
        "plugin": (
            {"path": policy.plugin.path, "timeout_s": policy.plugin.timeout_s}
            if policy.plugin
            else None
        ),
    }
