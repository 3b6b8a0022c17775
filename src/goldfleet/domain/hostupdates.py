"""Rules of host updates (docs/hosts.md): clusters of hypervisor hosts, their one update
channel, the sync schedule, the Debian repository formats a sync reads (deb822 stanzas,
``Release``, ``Packages``, dpkg's ``status``), Debian version order, the update hash and the
guidance an update carries. Pure functions, no I/O; times are naive UTC.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from goldfleet.domain.names import NAME_RE
from goldfleet.errors import Conflict, InvalidInput

HOST_STATES = ("enabled", "disabled", "offline")
CHANNEL_KINDS = ("early-access", "normal", "offline")
MAX_HOSTS = 256  # hosts in one cluster
MAX_FIELD = 64 << 10  # bytes of one deb822 field value
OLD_UPDATE = timedelta(days=183)  # six months: applying from older may not work

# --- clusters -------------------------------------------------------------------------------


def check_cluster(name: str, hosts: Sequence[str], coordinator: str, known: Sequence[str]) -> None:
    """A new cluster: a valid name, 1..MAX_HOSTS distinct hosts the driver knows, and its
    coordinator among them."""
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        raise InvalidInput(
            f"cluster name {name!r} is not valid: use 1 to 63 characters from a-z, 0-9, '.',"
            " '_' and '-', starting with a letter or digit"
        )
    if not hosts:
        raise InvalidInput(f"cluster {name}: give its hosts (--hosts h1,h2,...)")
    if len(hosts) > MAX_HOSTS:
        raise InvalidInput(f"cluster {name}: {len(hosts)} hosts; at most {MAX_HOSTS}")
    seen: set[str] = set()
    for host in hosts:
        if host in seen:
            raise InvalidInput(f"cluster {name}: host {host!r} is named twice")
        seen.add(host)
        if not isinstance(host, str) or NAME_RE.fullmatch(host) is None:
            raise InvalidInput(
                f"cluster {name}: host name {host!r} cannot be a cluster host (it names folders:"
                " a-z, 0-9, '.', '_', '-')"
            )
        if host not in known:
            raise InvalidInput(
                f"cluster {name}: host {host!r} is not a host of this server's driver"
                f" (known: {', '.join(known) or 'none'})"
            )
    check_coordinator(name, hosts, coordinator)


def check_coordinator(name: str, hosts: Sequence[str], coordinator: str) -> None:
    if coordinator not in hosts:
        raise InvalidInput(
            f"cluster {name}: coordinator {coordinator!r} is not one of its hosts"
            f" ({', '.join(hosts)})"
        )


def check_host_state(state: str) -> str:
    if state not in HOST_STATES:
        raise InvalidInput(f"host state {state!r} is not valid: {', '.join(HOST_STATES)}")
    return state


# --- channels -------------------------------------------------------------------------------


def check_channel_kind(kind: str) -> str:
    if kind not in CHANNEL_KINDS:
        raise InvalidInput(f"channel {kind!r} is not known: write {', '.join(CHANNEL_KINDS)}")
    return kind


def check_channel_change(cluster: str, enabled: str | None, new: str) -> None:
    """A cluster has at most one update channel: enabling ``new`` while another is enabled is
    refused with the rule. Setting the enabled channel again (a new URL or key) is allowed."""
    check_channel_kind(new)
    if enabled is not None and enabled != new:
        raise Conflict(
            f"cluster {cluster} has the {enabled} channel enabled: disable {enabled} before"
            f" enabling {new} (goldfleet cluster channel {cluster} --disable)"
        )


_SUITE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ARCH_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


def check_repository(url: str, suite: str, components: Sequence[str], arch: str) -> None:
    """An apt repository: an http(s) URL, a suite and components that are single path words."""
    if not re.fullmatch(r"https?://[^\s]{1,2000}", url or ""):
        raise InvalidInput(f"channel URL {url!r} is not valid: give an http:// or https:// URL")
    if not _SUITE_RE.fullmatch(suite or ""):
        raise InvalidInput(f"suite {suite!r} is not valid: one word such as bookworm")
    if not components:
        raise InvalidInput("give the repository's components (--components main)")
    for c in components:
        if not _SUITE_RE.fullmatch(c):
            raise InvalidInput(f"component {c!r} is not valid: one word such as main")
    if not _ARCH_RE.fullmatch(arch or ""):
        raise InvalidInput(f"architecture {arch!r} is not valid: such as amd64")


# --- sync schedule --------------------------------------------------------------------------

_TIME = re.compile(r"([01]?[0-9]|2[0-3]):([0-5][0-9])")
DAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")


def parse_sync_schedule(kind: str, *, day: int | None = None, at: str | None = None) -> str | None:
    """``daily [at HH:MM]``, ``weekly`` on ``day`` 0-6 (0 is Sunday, as in cron) ``[at HH:MM]``,
    or ``off``: the schedule as a five-field cron expression in UTC, None for off. The default
    time is 02:00 UTC."""
    if kind == "off":
        if day is not None or at is not None:
            raise InvalidInput("sync-schedule off takes no --day or --at")
        return None
    hour, minute = 2, 0
    if at is not None:
        m = _TIME.fullmatch(at.strip())
        if m is None:
            raise InvalidInput(f"--at {at!r} is not a time: write HH:MM (UTC), such as 01:30")
        hour, minute = int(m.group(1)), int(m.group(2))
    if kind == "daily":
        if day is not None:
            raise InvalidInput("a daily sync takes no --day; for one day a week write weekly")
        return f"{minute} {hour} * * *"
    if kind == "weekly":
        if day is None or isinstance(day, bool) or not 0 <= day <= 6:
            raise InvalidInput("a weekly sync needs --day 0-6 (0 is Sunday, 6 is Saturday)")
        return f"{minute} {hour} * * {day}"
    raise InvalidInput(f"sync schedule {kind!r} is not valid: write daily, weekly or off")


def describe_schedule(cron: str | None) -> str:
    """The cron expression this module writes, back in words."""
    if cron is None:
        return "off"
    minute, hour, _, _, dow = cron.split(" ")
    at = f"{int(hour):02d}:{int(minute):02d} UTC"
    if dow == "*":
        return f"daily at {at}"
    return f"weekly on {DAYS[int(dow)]} (day {dow}) at {at}"


# --- deb822 ---------------------------------------------------------------------------------


def parse_stanzas(text: str, what: str) -> list[dict[str, str]]:
    """Paragraphs of ``Field: value`` lines (Debian's control format, deb822); field names are
    lower-cased (they are case-insensitive); continuation lines start with a space or tab and
    are joined with newlines. Malformed text is refused naming ``what`` and the line."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            if current:
                stanzas.append(current)
            current, last = {}, None
            continue
        if line.startswith("#"):
            continue
        if line[0] in " \t":
            if last is None:
                raise InvalidInput(f"{what}, line {number}: a continuation line with no field")
            current[last] += "\n" + line[1:]
            if len(current[last]) > MAX_FIELD:
                raise InvalidInput(f"{what}, line {number}: field {last} is too long")
            continue
        name, sep, value = line.partition(":")
        if not sep or not re.fullmatch(r"[!-9;-~][!-9;-~]*", name):
            raise InvalidInput(f"{what}, line {number}: {line[:60]!r} is not 'Field: value'")
        last = name.lower()
        if last in current:
            raise InvalidInput(f"{what}, line {number}: field {name} appears twice")
        current[last] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_PATH_RE = re.compile(r"[A-Za-z0-9+_.~-]+(/[A-Za-z0-9+_.~-]+)*")


def safe_path(path: str, what: str) -> str:
    """A repository path goldfleet may fetch and name a file by: relative, no '..'."""
    if not _PATH_RE.fullmatch(path) or any(p in (".", "..") for p in path.split("/")):
        raise InvalidInput(f"{what}: path {path!r} is not a safe relative path")
    return path


@dataclass(frozen=True)
class Release:
    suite: str
    codename: str
    sha256: dict[str, tuple[str, int]]  # path under dists/SUITE/ → (sha256, size)
    valid_until: str | None = None


def parse_release(text: str) -> Release:
    """A ``Release`` (the verified text of ``InRelease``): its suite and its SHA256 index."""
    stanzas = parse_stanzas(text, "Release")
    if len(stanzas) != 1:
        raise InvalidInput(f"Release: expected one paragraph, found {len(stanzas)}")
    fields = stanzas[0]
    index: dict[str, tuple[str, int]] = {}
    for line in fields.get("sha256", "").split("\n"):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3 or not _SHA256_RE.fullmatch(parts[0]) or not parts[1].isdigit():
            raise InvalidInput(
                f"Release: SHA256 line {line.strip()[:80]!r} is not 'hash size path'"
            )
        index[safe_path(parts[2], "Release")] = (parts[0], int(parts[1]))
    if not index:
        raise InvalidInput("Release: it has no SHA256 index; goldfleet verifies by sha256 only")
    return Release(
        suite=fields.get("suite", ""),
        codename=fields.get("codename", ""),
        sha256=index,
        valid_until=fields.get("valid-until"),
    )


def check_release(release: Release, suite: str, now: datetime) -> None:
    """As apt does: the signed Release must be the suite asked for (its Suite or Codename),
    and not past its Valid-Until (an old signed index replayed)."""
    if suite not in (release.suite, release.codename):
        raise InvalidInput(
            f"the signed Release is for suite {release.suite or '?'} (codename"
            f" {release.codename or '?'}), not {suite}: refused"
        )
    if release.valid_until:
        try:
            until = parsedate_to_datetime(release.valid_until)
        except (TypeError, ValueError):
            raise InvalidInput(
                f"the signed Release's Valid-Until {release.valid_until!r} is not a date"
            ) from None
        if until.tzinfo is not None:
            until = until.astimezone(UTC).replace(tzinfo=None)
        if until < now:
            raise InvalidInput(
                f"the signed Release expired at {until.isoformat()} UTC (Valid-Until): the"
                " repository serves an old index; refused"
            )


PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
VERSION_TEXT_RE = re.compile(r"([0-9]+:)?[0-9][A-Za-z0-9.+~:-]*")


@dataclass(frozen=True)
class PackageEntry:
    """One binary package of a repository's ``Packages`` index."""

    package: str
    version: str
    architecture: str
    filename: str
    size: int
    sha256: str
    source: str  # the source package (the update it belongs to); the package itself if none
    section: str = ""
    description: str = ""  # the synopsis (first line)
    declared: str = ""  # its own ``Goldfleet-Guidance`` control field, if any
    livepatch_kernel: str = ""  # ``Livepatch-Kernel``: the kernel release a live patch fixes


def check_package_name(name: str) -> str:
    if not PACKAGE_RE.fullmatch(name):
        raise InvalidInput(f"package name {name!r} is not a Debian package name")
    return name


def check_version_text(version: str) -> str:
    if not VERSION_TEXT_RE.fullmatch(version) or len(version) > 200:
        raise InvalidInput(f"version {version!r} is not a Debian version")
    return version


def parse_packages(text: str, what: str = "Packages") -> list[PackageEntry]:
    """A ``Packages`` index: every stanza must name its package, version, architecture, file,
    size and sha256 (goldfleet fetches and verifies nothing else)."""
    entries = []
    for i, st in enumerate(parse_stanzas(text, what), 1):
        where = f"{what}, package {i}"
        for required in ("package", "version", "architecture", "filename", "size", "sha256"):
            if required not in st:
                raise InvalidInput(f"{where}: field {required.title()} is missing")
        name = check_package_name(st["package"])
        version = check_version_text(st["version"])
        if not st["size"].isdigit():
            raise InvalidInput(f"{where} ({name}): Size {st['size']!r} is not a number")
        if not _SHA256_RE.fullmatch(st["sha256"]):
            raise InvalidInput(f"{where} ({name}): SHA256 is not 64 hex digits")
        source = st.get("source", "").split(" ")[0] or name
        entries.append(
            PackageEntry(
                package=name,
                version=version,
                architecture=st["architecture"],
                filename=safe_path(st["filename"], where),
                size=int(st["size"]),
                sha256=st["sha256"],
                source=source,
                section=st.get("section", ""),
                description=st.get("description", "").split("\n")[0],
                declared=st.get("goldfleet-guidance", ""),
                livepatch_kernel=st.get("livepatch-kernel", ""),
            )
        )
    return entries


def parse_dpkg_status(text: str) -> dict[str, str]:
    """dpkg's ``status`` database: installed package → version (only packages whose status is
    ``install ok installed``)."""
    installed = {}
    for st in parse_stanzas(text, "dpkg status"):
        if st.get("status", "").split()[-1:] != ["installed"] or "package" not in st:
            continue
        installed[st["package"]] = st.get("version", "")
    return installed


# --- Debian version order -------------------------------------------------------------------


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _compare_part(a: str, b: str) -> int:
    """dpkg's verrevcmp: alternating non-digit and digit runs."""
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def _split(version: str) -> tuple[int, str, str]:
    epoch, colon, rest = version.partition(":")
    if not colon:
        epoch, rest = "0", version
    upstream, dash, revision = rest.rpartition("-")
    if not dash:
        upstream, revision = rest, ""
    return int(epoch or 0), upstream, revision


def compare_versions(a: str, b: str) -> int:
    """Debian's order of versions (as ``dpkg --compare-versions``): <0, 0 or >0."""
    ea, ua, ra = _split(a)
    eb, ub, rb = _split(b)
    if ea != eb:
        return ea - eb
    return _compare_part(ua, ub) or _compare_part(ra, rb)


# --- guidance -------------------------------------------------------------------------------

CATEGORIES = ("mandatory", "recommended", "full", "livepatch")
HOST_TASKS = ("evacuate", "reboot-host", "restart-toolstack", "apply-livepatch")
VM_TASKS = ("restart-device-model", "restart-vm")
TASKS = HOST_TASKS + VM_TASKS


@dataclass(frozen=True)
class GuidanceRule:
    """Packages whose name matches ``pattern`` carry ``task`` in ``category``."""

    pattern: str  # a regular expression, matched against the whole name
    category: str
    task: str
    why: str
    glob: str = ""  # as the admin wrote it (a cluster's own rule)


# the shipped default (docs/hosts.md); first match wins
DEFAULT_RULES: tuple[GuidanceRule, ...] = (
    GuidanceRule(r"livepatch-.+", "livepatch", "apply-livepatch", "a live patch of a kernel"),
    GuidanceRule(r"linux-image-.+", "recommended", "reboot-host", "a kernel"),
    GuidanceRule(r"(firmware-.+|.+-microcode)", "full", "reboot-host", "firmware or CPU microcode"),
    GuidanceRule(r"libvirt.*", "mandatory", "restart-toolstack", "libvirt, the toolstack"),
    GuidanceRule(
        r"(qemu-system.*|qemu-kvm|qemu-system-common|qemu-block-.+)",
        "recommended",
        "restart-device-model",
        "QEMU, the device model of running VMs",
    ),
)


Guidance = dict[str, list[str]]
MAX_RULES = 100


def parse_rules(items: object) -> tuple[GuidanceRule, ...]:
    """A cluster's own rules, tried before the shipped ones: a list of ``{"packages": GLOB,
    "category": C, "task": T}`` (GLOB as in a shell: ``linux-image-*``; ``*`` and ``?`` only,
    no regular expression). Refused whole if any rule is not valid."""
    if not isinstance(items, list) or len(items) > MAX_RULES:
        raise InvalidInput(f"guidance rules: give a list of at most {MAX_RULES} rules")
    rules = []
    for i, item in enumerate(items, 1):
        if not isinstance(item, dict) or set(item) - {"packages", "category", "task", "why"}:
            raise InvalidInput(
                f"guidance rule {i}: an object with packages, category, task (and why)"
            )
        glob, category, task = item.get("packages"), item.get("category"), item.get("task")
        if not isinstance(glob, str) or not re.fullmatch(r"[a-z0-9+.*?-]{1,100}", glob):
            raise InvalidInput(
                f"guidance rule {i}: packages {glob!r} is not a package name pattern (a-z, 0-9,"
                " '+', '.', '-', with * and ?)"
            )
        if category not in CATEGORIES:
            raise InvalidInput(
                f"guidance rule {i}: category {category!r} is not one of {', '.join(CATEGORIES)}"
            )
        if task not in TASKS:
            raise InvalidInput(f"guidance rule {i}: task {task!r} is not one of {', '.join(TASKS)}")
        why = item.get("why", "this cluster's rule")
        if not isinstance(why, str) or len(why) > 200:
            raise InvalidInput(f"guidance rule {i}: why must be a short text")
        rules.append(GuidanceRule(fnmatch.translate(glob), category, task, why, glob))
    return tuple(rules)


def empty_guidance() -> Guidance:
    return {c: [] for c in CATEGORIES}


def parse_declared(text: str, what: str) -> list[tuple[str, str]]:
    """A package's own ``Goldfleet-Guidance: CATEGORY:TASK[, CATEGORY:TASK…]``."""
    pairs = []
    for item in text.replace("\n", ",").split(","):
        item = item.strip()
        if not item:
            continue
        category, sep, task = item.partition(":")
        category, task = category.strip(), task.strip()
        if not sep or category not in CATEGORIES or task not in TASKS:
            raise InvalidInput(
                f"{what}: Goldfleet-Guidance {item!r} is not CATEGORY:TASK (categories:"
                f" {', '.join(CATEGORIES)}; tasks: {', '.join(TASKS)})"
            )
        pairs.append((category, task))
    return pairs


def guidance_of(entry: PackageEntry, rules: Sequence[GuidanceRule] = DEFAULT_RULES) -> Guidance:
    """The guidance of one package: its declared control field if it has one, else the first
    rule its name matches, else none (a plain package needs no task)."""
    g = empty_guidance()
    declared = parse_declared(entry.declared, f"package {entry.package}")
    if declared:
        for category, task in declared:
            _add(g, category, task)
        return g
    for rule in rules:
        if re.fullmatch(rule.pattern, entry.package, re.DOTALL):
            _add(g, rule.category, rule.task)
            break
    return g


def _add(g: Guidance, category: str, task: str) -> None:
    if task not in g[category]:
        g[category].append(task)
        g[category].sort(key=TASKS.index)


def merge(guidances: Iterable[Guidance]) -> Guidance:
    out = empty_guidance()
    for g in guidances:
        for category in CATEGORIES:
            for task in g.get(category, []):
                _add(out, category, task)
    return out


def livepatch_kernel(entry: PackageEntry) -> str:
    """The kernel release a live patch package fixes: its ``Livepatch-Kernel`` field, else the
    rest of its name (``livepatch-6.1.0-18-amd64``)."""
    if entry.livepatch_kernel:
        return entry.livepatch_kernel
    return entry.package.removeprefix("livepatch-")


def host_guidance(
    lacking: Sequence[PackageEntry],
    booted_kernel: str | None,
    rules: Sequence[GuidanceRule] = DEFAULT_RULES,
) -> Guidance:
    """What a host must do once it has the packages it lacks. A live patch for the kernel the
    host last booted replaces the recommended ``reboot-host`` with ``apply-livepatch``
    (livepatch category); on a host booted from another kernel it does not apply, and the
    recommended guidance stands."""
    patches = [e for e in lacking if "apply-livepatch" in guidance_of(e, rules)["livepatch"]]
    others = [guidance_of(e, rules) for e in lacking if e not in patches]
    g = merge(others)
    applies = booted_kernel is not None and any(
        livepatch_kernel(p) == booted_kernel for p in patches
    )
    if applies:
        _add(g, "livepatch", "apply-livepatch")
        if "reboot-host" in g["recommended"]:
            g["recommended"].remove("reboot-host")
    return g


# --- what a sync makes available ------------------------------------------------------------


@dataclass(frozen=True)
class HostLack:
    package: str
    installed: str
    available: str


@dataclass
class Plan:
    """What a sync makes available: the repository's newest version of every package some
    host has installed at a lower version, and per host what it lacks."""

    packages: list[PackageEntry] = field(default_factory=list)
    lacks: dict[str, list[HostLack]] = field(default_factory=dict)


def newest(entries: Iterable[PackageEntry], arch: str) -> dict[str, PackageEntry]:
    """Per package name, its highest version for ``arch`` (or ``all``)."""
    best: dict[str, PackageEntry] = {}
    for e in entries:
        if e.architecture not in (arch, "all"):
            continue
        held = best.get(e.package)
        if held is None or compare_versions(e.version, held.version) > 0:
            best[e.package] = e
    return best


def plan_updates(
    entries: Iterable[PackageEntry], installed: Mapping[str, Mapping[str, str]], arch: str
) -> Plan:
    """``installed``: host → package → version. Updates are upgrades of what hosts have
    (apt's upgrade, not install): a package no host has is not an update."""
    candidates = newest(entries, arch)
    plan = Plan()
    needed: dict[str, PackageEntry] = {}
    for host in sorted(installed):
        lacks = []
        for package, version in sorted(installed[host].items()):
            e = candidates.get(package)
            if e is not None and compare_versions(e.version, version) > 0:
                lacks.append(HostLack(package, version, e.version))
                needed[package] = e
        plan.lacks[host] = lacks
    plan.packages = [needed[p] for p in sorted(needed)]
    return plan


def update_hash(items: Iterable[tuple[str, str, str]]) -> str:
    """One digest over the sorted set of (package, version, sha256) a sync made available: the
    sha256 of their lines ``package version sha256\\n`` in sorted order, as ``sha256:<hex>``.
    Independent of order and of duplicates; any change of a package, version or file changes
    it."""
    lines = sorted({f"{p} {v} {s}\n" for p, v, s in items})
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


def old_update_warning(last_applied: datetime | None, now: datetime) -> str | None:
    """A cluster whose last applied update is older than six months gets a warning."""
    if last_applied is not None and now - last_applied > OLD_UPDATE:
        days = (now - last_applied).days
        return (
            f"the last update applied here is {days} days old: applying from so old a state"
            " may not work; test it on one host first"
        )
    return None


# --- the rolling update's plan (rules only: the operation that runs it is not built yet) ----

LEVELS = ("mandatory", "recommended", "full")


def check_level(level: str) -> str:
    if level not in LEVELS:
        raise InvalidInput(f"--level {level!r} is not valid: write {', '.join(LEVELS)}")
    return level


def split_by_level(g: Guidance, level: str) -> tuple[list[str], Guidance]:
    """The tasks an update at ``level`` runs, and the rest, left as pending guidance. A level
    takes its own category and those below it (mandatory < recommended < full); a live patch
    (the livepatch category) runs at every level, as it replaces a recommended reboot."""
    check_level(level)
    taken = LEVELS[: LEVELS.index(level) + 1]
    run: list[str] = []
    deferred = empty_guidance()
    for category in CATEGORIES:
        for task in g.get(category, []):
            if category in taken or category == "livepatch":
                if task not in run:
                    run.append(task)
            else:
                _add(deferred, category, task)
    for category in CATEGORIES:  # a task run at this level is not pending in a higher one
        deferred[category] = [t for t in deferred[category] if t not in run]
    run.sort(key=TASKS.index)
    return run, deferred


def host_steps(tasks: Sequence[str]) -> list[str]:
    """The steps of one host, in order, for the tasks it runs: disable; evacuate when a task
    needs it (evacuate or reboot-host); apply the packages; restart the toolstack unless a
    reboot follows; apply the live patch; reboot; restart device models unless a VM restart
    follows; restart VMs; enable; bring evacuated VMs back."""
    reboot = "reboot-host" in tasks
    evacuate = reboot or "evacuate" in tasks
    steps = ["disable"]
    if evacuate:
        steps.append("evacuate")
    steps.append("apply-packages")
    if "restart-toolstack" in tasks and not reboot:
        steps.append("restart-toolstack")
    if "apply-livepatch" in tasks:
        steps.append("apply-livepatch")
    if reboot:
        steps.append("reboot-host")
    if "restart-device-model" in tasks and "restart-vm" not in tasks:
        steps.append("restart-device-model")
    if "restart-vm" in tasks:
        steps.append("restart-vm")
    steps.append("enable")
    if evacuate:
        steps.append("migrate-back")
    return steps


def update_order(hosts: Sequence[str], coordinator: str) -> list[str]:
    """The coordinator first, then the others in the cluster's order."""
    return [coordinator, *(h for h in hosts if h != coordinator)]


@dataclass(frozen=True)
class Precheck:
    name: str
    ok: bool
    reason: str = ""


def prechecks(
    *,
    requested_hash: str,
    synced_hash: str | None,
    synced_by: str | None,
    coordinator: str,
    host_states: Mapping[str, str],
    offline_at_sync: Sequence[str],
    syncing: bool,
) -> list[Precheck]:
    """The prechecks of a rolling update that goldfleet can decide today, each by name."""
    out = []
    down = [h for h, s in host_states.items() if s != "enabled"] + [
        h for h in offline_at_sync if host_states.get(h) == "enabled"
    ]
    out.append(
        Precheck(
            "hosts-online",
            not down,
            f"not online and enabled: {', '.join(sorted(set(down)))}" if down else "",
        )
    )
    if synced_hash is None:
        out.append(Precheck("hash-is-latest-sync", False, "no sync yet"))
    else:
        out.append(
            Precheck(
                "hash-is-latest-sync",
                requested_hash == synced_hash,
                ""
                if requested_hash == synced_hash
                else f"the latest sync's hash is {synced_hash}, not {requested_hash}",
            )
        )
    out.append(
        Precheck(
            "synced-by-coordinator",
            synced_by == coordinator,
            ""
            if synced_by == coordinator
            else f"the latest sync was made by {synced_by or 'no host'}, the coordinator is"
            f" {coordinator}: sync again",
        )
    )
    out.append(Precheck("no-sync-running", not syncing, "a sync is running" if syncing else ""))
    return out


# --- the rolling update (docs/host-updates.md) ----------------------------------------------

UNLIMITED = 1 << 50  # a host whose capacity was not given holds anything
MAX_COMMANDS = 20  # HA/balancing commands per switch
MAX_ARGS = 64
OPEN_UPDATE = ("running", "paused")


def check_commands(items: object, what: str) -> list[list[str]]:
    """HA/balancing commands: a list of argv lists (run without a shell)."""
    if not isinstance(items, list) or len(items) > MAX_COMMANDS:
        raise InvalidInput(f"{what}: give a list of at most {MAX_COMMANDS} commands")
    out = []
    for i, argv in enumerate(items, 1):
        if (
            not isinstance(argv, list)
            or not argv
            or len(argv) > MAX_ARGS
            or not all(isinstance(a, str) and 0 < len(a) <= 4096 and "\0" not in a for a in argv)
        ):
            raise InvalidInput(
                f"{what}, command {i}: an argv list of 1 to {MAX_ARGS} non-empty words"
                ' (["ha-manager", "crm-command", "node-maintenance", "enable", "h1"])'
            )
        out.append(list(argv))
    return out


def check_max_hosts(k: int, hosts: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max(1, hosts):
        raise InvalidInput(f"--max-hosts {k} is not valid: 1 to {max(1, hosts)} (the hosts)")
    return k


@dataclass(frozen=True)
class Vm:
    name: str
    memory_mib: int
    vcpus: int


Free = dict[str, tuple[int, int]]  # host → (memory MiB, vCPUs) free


def free_capacity(
    capacity: Mapping[str, tuple[int | None, int | None]], load: Mapping[str, Sequence[Vm]]
) -> Free:
    """What each host has left: its capacity (None: unlimited) less its running VMs."""
    out = {}
    for host, (mem, cpu) in capacity.items():
        used = load.get(host, ())
        out[host] = (
            (UNLIMITED if mem is None else mem) - sum(v.memory_mib for v in used),
            (UNLIMITED if cpu is None else cpu) - sum(v.vcpus for v in used),
        )
    return out


def place(vms: Sequence[Vm], free: Free, targets: Sequence[str]) -> dict[str, str | None]:
    """Where each VM goes among ``targets``: the largest first, each to the target with the
    most free memory that holds it (memory and vCPUs); None where none does. ``free`` is not
    changed."""
    left = {h: free[h] for h in targets if h in free}
    out: dict[str, str | None] = {}
    for vm in sorted(vms, key=lambda v: (-v.memory_mib, -v.vcpus, v.name)):
        fits = [h for h, (m, c) in left.items() if m >= vm.memory_mib and c >= vm.vcpus]
        if not fits:
            out[vm.name] = None
            continue
        best = max(fits, key=lambda h: (left[h][0], -list(left).index(h)))
        m, c = left[best]
        left[best] = (m - vm.memory_mib, c - vm.vcpus)
        out[vm.name] = best
    return out


def place_preferring(
    vms: Sequence[Vm], free: Free, groups: Sequence[Sequence[str]]
) -> dict[str, str | None]:
    """As :func:`place`, on the first group of hosts first (hosts already updated: a VM put
    there is not moved again when a later host is updated), then on the next for the rest."""
    left = dict(free)
    out: dict[str, str | None] = {vm.name: None for vm in vms}
    todo = list(vms)
    for targets in groups:
        got = place(todo, left, targets)
        for vm in todo:
            dest = got[vm.name]
            if dest is not None:
                m, c = left[dest]
                left[dest] = (m - vm.memory_mib, c - vm.vcpus)
                out[vm.name] = dest
        todo = [vm for vm in todo if out[vm.name] is None]
    return out


def holds_all(
    capacity: Mapping[str, tuple[int | None, int | None]],
    load: Mapping[str, Sequence[Vm]],
    out: Sequence[str],
) -> bool:
    """Whether the hosts not in ``out`` hold every running VM of the cluster (those of the
    hosts in ``out`` placed on them, first fit by memory): may these hosts be out at once?"""
    stay = [h for h in capacity if h not in out]
    moving = [vm for h in out for vm in load.get(h, ())]
    placed = place(moving, free_capacity(capacity, {h: load.get(h, ()) for h in stay}), stay)
    return all(v is not None for v in placed.values())


def update_prechecks(
    *,
    base: list[Precheck],
    reachable: Mapping[str, str | None],
    pending_mandatory: Mapping[str, list[str]],
    ha_commands: bool,
    ha_already_disabled: bool,
    open_update: str | None,
) -> list[Precheck]:
    """The prechecks of a rolling update beyond those of :func:`prechecks`, each by name."""
    out = list(base)
    down = {h: why for h, why in reachable.items() if why}
    if down:
        for i, p in enumerate(out):
            if p.name == "hosts-online":
                reasons = "; ".join(f"{h}: {w}" for h, w in sorted(down.items()))
                before = p.reason + "; " if p.reason else ""
                out[i] = Precheck("hosts-online", False, before + reasons)
    pend = {h: t for h, t in pending_mandatory.items() if t}
    out.append(
        Precheck(
            "no-pending-mandatory-guidance",
            not pend,
            "mandatory guidance left from before: "
            + "; ".join(f"{h}: {', '.join(t)}" for h, t in sorted(pend.items()))
            + " (goldfleet cluster pending NAME --run)"
            if pend
            else "",
        )
    )
    ok = ha_commands or ha_already_disabled
    out.append(
        Precheck(
            "ha-and-balancing-disabled",
            ok,
            ""
            if ok
            else "no HA/balancing disable commands are configured (goldfleet cluster ha NAME"
            " --disable-cmd ... --enable-cmd ...); or say they are off with --ha-disabled",
        )
    )
    out.append(
        Precheck(
            "no-update-running",
            open_update is None,
            f"update {open_update} of this cluster is not finished" if open_update else "",
        )
    )
    return out
