"""A real boot: a goldfleet linked clone started by the libvirt driver under QEMU.

The guest is built here from Debian packages only, fetched with ``apt-get download`` and
unpacked with ``dpkg-deb`` (cached in ``.cache/boot-guest/``): the kernel of
``linux-image-cloud-amd64`` and its virtio modules, ``qemu-ga`` of ``qemu-guest-agent`` with the
host's copies of its libraries, and ``busybox-static``, in an initramfs assembled in Python.

Its ``/init`` prints what it sees of each disk on the serial console, writes a marker to the
system and temp disks, starts the guest agent and waits. Stand-ins for ``wall``, ``loginctl``
and ``shutdown`` print their input on the console, and a utmp record says ``alice`` is logged
in. The test then proves, from the host:

- the guest saw the system volume through its backing layer, and the temp and data volumes, in
  that order (``vda``, ``vdb``, ``vdc``);
- sessions, messages and log-off go through the real agent with the right programs and
  arguments, and a failing program's words come back;
- the guest tool is installed, run and read back through the agent (version, `nq-set -n`
  exit codes, `nq-set` saving in order, the descriptor read back and judged);
- a graceful shutdown goes through the agent and does not need the forced one;
- the guest's writes landed in the clone's own files and the sealed layer is unchanged.

libvirt runs embedded in the test process (``qemu:///embed?root=…``): no daemon is needed. KVM is
tried where /dev/kvm is usable, then QEMU's TCG; the test is skipped only where neither exists.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest

from goldfleet import guest
from goldfleet.domain import quarantine
from goldfleet.domain.model import CloneKind, Outline
from goldfleet.drivers.base import DiskSpec, DomainSpec, DriverError, GuestSession, KernelBoot
from goldfleet.store.layers import LayerStore
from goldfleet.store.qemu import QemuImg
from goldfleet.store.volumes import VolumeStore

pytestmark = pytest.mark.slow

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "boot-guest"
CAPS_CACHE = CACHE / "libvirt-qemu-capabilities"
KERNEL_META = "linux-image-cloud-amd64"
AGENT_PACKAGE = "qemu-guest-agent"
# the modules a kernel needs for virtio disks and the agent's port; any may be built in instead
WANTED_MODULES = ("virtio_pci", "virtio_blk", "virtio_console")
SYSTEM_MARKER = b"GOLDFLEET-SYSTEM-MARKER-BASE-LAYER"
DATA_MARKER = b"GOLDFLEET-DATA-MARKER-KEEP-ME"
SYSTEM_WRITE = b"GOLDFLEET-GUEST-WROTE-SYSTEM"
TEMP_WRITE = b"GOLDFLEET-GUEST-WROTE-TEMP"
LOGIN_TIME = 1_700_000_000
READY_BUDGET = {"kvm": 10.0, "qemu": 60.0}  # seconds to a ready guest; TCG needs about 5
NAME = "gf-boot"
T = TypeVar("T")


# --- virtualization -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def virtualization() -> str:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None and not os.path.exists("/dev/kvm"):
        reason = "no /dev/kvm and no qemu-system-x86_64: this machine cannot run a VM"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    if qemu is None:
        pytest.fail(
            "/dev/kvm exists but qemu-system-x86_64 is missing: install Debian's"
            " qemu-system-x86 (make system-packages does)"
        )
    return "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "tcg"


# --- Debian packages, fetched and cached -----------------------------------------------------


def _run(argv: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _apt(*args: str) -> str:
    proc = subprocess.run(["apt-cache", *args], capture_output=True, text=True, timeout=60)
    return proc.stdout if proc.returncode == 0 else ""


def _cached(key: str, make: Callable[[Path], None]) -> Path:
    """``CACHE/key``, made by ``make(folder)`` when missing."""
    dest = CACHE / key
    if not (dest / "complete").exists():
        part = CACHE / f".{key}.part"
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        make(part)
        (part / "complete").touch()
        shutil.rmtree(dest, ignore_errors=True)
        part.rename(dest)
    return dest


def _newest_cached(prefix: str) -> Path:
    """Without apt's package lists, whatever an earlier run cached."""
    cached = sorted(p for p in CACHE.glob(f"{prefix}*") if (p / "complete").exists())
    if not cached:
        pytest.fail(
            f"apt knows no {prefix}… package and nothing is cached in {CACHE}: run"
            " apt-get update (make system-packages does)"
        )
    return cached[-1]


def _unpack(package: str, work: Path) -> Path:
    """``apt-get download`` and ``dpkg-deb -x`` of one package; returns its root folder."""
    _run(["apt-get", "download", "-q", package], cwd=work)
    debs = list(work.glob(f"{package}_*.deb"))
    if len(debs) != 1:
        pytest.fail(f"apt-get download {package} gave {debs}")
    root = work / "root"
    _run(["dpkg-deb", "-x", str(debs[0]), str(root)])
    return root


def _module_depends(ko: Path) -> list[str]:
    m = re.search(rb"depends=([A-Za-z0-9_,-]*)\x00", ko.read_bytes())
    return [d.replace("-", "_") for d in m.group(1).decode().split(",") if d] if m else []


def _load_order(modules: dict[str, Path], wanted: tuple[str, ...]) -> list[str]:
    """Dependencies first; names not shipped as modules are taken to be built in."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order or name not in modules:
            return
        for dep in _module_depends(modules[name]):
            if dep not in modules:
                pytest.fail(f"kernel module {name} needs {dep}, which the package lacks")
            visit(dep)
        order.append(name)

    for name in wanted:
        visit(name)
    return order


def guest_kernel() -> Path:
    """A folder with ``vmlinuz`` and ``modules/`` (``modules/order`` is the load order)."""
    found = re.search(
        r"Depends: (linux-image-[0-9]\S*-cloud-amd64)\b", _apt("depends", KERNEL_META)
    )
    if found is None:
        return _newest_cached("linux-image-")
    package = found.group(1)

    def make(dest: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="gf-kernel-") as work:
            root = _unpack(package, Path(work))
            kernels = list((root / "boot").glob("vmlinuz-*"))
            if len(kernels) != 1:
                pytest.fail(f"{package} holds {len(kernels)} kernels, expected one")
            modules = {
                ko.name.removesuffix(".ko").replace("-", "_"): ko
                for ko in root.glob("lib/modules/*/kernel/**/*.ko")
            }
            order = _load_order(modules, WANTED_MODULES)
            config = "".join(c.read_text() for c in (root / "boot").glob("config-*"))
            for name in WANTED_MODULES:
                if name not in modules and f"CONFIG_{name.upper()}=y" not in config:
                    pytest.fail(f"{package} has {name} neither as a module nor built in")
            shutil.copyfile(kernels[0], dest / "vmlinuz")
            (dest / "modules").mkdir()
            for name in order:
                shutil.copyfile(modules[name], dest / "modules" / f"{name}.ko")
            (dest / "modules" / "order").write_text("".join(f"{n}\n" for n in order))

    return _cached(package, make)


def guest_agent() -> Path:
    """A folder with ``qemu-ga`` from Debian's qemu-guest-agent."""
    found = re.search(r"Candidate: (\S+)", _apt("policy", AGENT_PACKAGE))
    if found is None or found.group(1) == "(none)":
        return _newest_cached(f"{AGENT_PACKAGE}_")

    def make(dest: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="gf-agent-") as work:
            root = _unpack(AGENT_PACKAGE, Path(work))
            shutil.copyfile(root / "usr/sbin/qemu-ga", dest / "qemu-ga")

    return _cached(f"{AGENT_PACKAGE}_{found.group(1).replace(':', '_')}", make)


# --- the initramfs ---------------------------------------------------------------------------

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m.ko; done
i=0
while [ ! -e /sys/block/vdc ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "GOLDFLEET-BLOCK $(ls /sys/block | tr '\\n' ' ')"
for d in /sys/block/vd*; do
  n=${d##*/}
  head=$(head -c 64 /dev/$n | tr -cd 'A-Z-')
  echo "GOLDFLEET-DISK $n serial=$(cat $d/serial) sectors=$(cat $d/size) head=$head"
done
printf '%s' @SYSTEM_WRITE@ | dd of=/dev/vda bs=512 seek=2048 conv=sync,fsync 2>/dev/null
printf '%s' @TEMP_WRITE@ | dd of=/dev/vdb bs=512 conv=sync,fsync 2>/dev/null
sync
port=
i=0
while [ -z "$port" ] && [ $i -lt 100 ]; do
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat $p/name 2>/dev/null)" = org.qemu.guest_agent.0 ] && port=/dev/${p##*/}
  done
  [ -n "$port" ] || sleep 0.1
  i=$((i+1))
done
/usr/sbin/qemu-ga -m virtio-serial -p "$port" -t /run -f /run/qemu-ga.pid &
echo "GOLDFLEET-READY port=$port"
while :; do sleep 3600; done
"""

GUEST_POLICY = 'threshold = "b"\n[[versions]]\nname = "a"\n[[versions]]\nname = "b"\n'

# stand-ins for the programs the driver runs through the agent: they report on the console
WALL = """#!/bin/busybox sh
echo "GOLDFLEET-WALL $(cat)" > /dev/console
"""
LOGINCTL = """#!/bin/busybox sh
echo "GOLDFLEET-LOGINCTL $*" > /dev/console
[ "$*" = "terminate-user -- alice" ] && exit 0
echo "Failed to terminate user $3: User $3 is not logged in" >&2
exit 1
"""
SHUTDOWN = """#!/bin/busybox sh
echo "GOLDFLEET-SHUTDOWN $*" > /dev/console
sync
poweroff -f
"""


def _is_static(binary: bytes) -> bool:
    """An ELF file without a PT_INTERP program header needs no dynamic loader."""
    phoff = struct.unpack_from("<Q", binary, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", binary, 0x36)
    return all(
        struct.unpack_from("<I", binary, phoff + i * phentsize)[0] != 3 for i in range(phnum)
    )


def _libraries(binary: Path) -> list[str]:
    """The host's copies of the shared libraries ``binary`` needs, with the loader."""
    out = _run(["ldd", str(binary)])
    if "not found" in out:
        pytest.fail(f"{binary} needs libraries this host lacks:\n{out}")
    return sorted(set(re.findall(r"(/\S+) \(0x", out)))


def _utmp(user: str, line: str, login_time: int) -> bytes:
    """One glibc utmp record (x86-64 layout) of a logged-in user, as login(1) writes it."""
    user_process = 7
    return struct.pack(
        "<hhi32s4s32s256shhiii4i20s",
        user_process,
        0,
        1,
        line.encode(),
        line[-4:].encode(),
        user.encode(),
        b"",
        0,
        0,
        0,
        login_time,
        0,
        0,
        0,
        0,
        0,
        b"",
    )


def _cpio(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """A newc cpio archive of (name, mode, data, rdev) entries, as the kernel unpacks it."""
    out = io.BytesIO()
    for ino, (name, mode, data, rdev) in enumerate([*entries, ("TRAILER!!!", 0, b"", 0)], 1):
        encoded = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev >> 8, rdev & 0xFF]
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.write(b"%08X" % len(encoded) + b"%08X" % 0)
        out.write(encoded)
        out.write(b"\0" * (-out.tell() % 4))
        out.write(data)
        out.write(b"\0" * (-out.tell() % 4))
    return out.getvalue()


def build_initramfs(kernel: Path, agent: Path, dest: Path) -> None:
    busybox = Path(shutil.which("busybox") or "/bin/busybox")
    if not busybox.exists():
        pytest.fail("busybox is missing: install Debian's busybox-static")
    binary = busybox.read_bytes()
    if not _is_static(binary):
        pytest.fail(f"{busybox} is dynamically linked: install Debian's busybox-static")
    init = INIT.replace("@SYSTEM_WRITE@", SYSTEM_WRITE.decode()).replace(
        "@TEMP_WRITE@", TEMP_WRITE.decode()
    )
    d, f, c = stat.S_IFDIR | 0o755, stat.S_IFREG, stat.S_IFCHR | 0o600
    exe = f | 0o755
    files: dict[str, tuple[int, bytes]] = {
        "bin/busybox": (exe, binary),
        "init": (exe, init.encode()),
        "usr/sbin/qemu-ga": (exe, (agent / "qemu-ga").read_bytes()),
        "usr/bin/wall": (exe, WALL.encode()),
        "usr/bin/loginctl": (exe, LOGINCTL.encode()),
        "sbin/shutdown": (exe, SHUTDOWN.encode()),
        "run/utmp": (f | 0o644, _utmp("alice", "pts/0", LOGIN_TIME)),
    }
    for lib in _libraries(agent / "qemu-ga"):
        files[lib.lstrip("/")] = (exe, Path(lib).read_bytes())
    for ko in (kernel / "modules").iterdir():
        files[f"lib/modules/{ko.name}"] = (f | 0o644, ko.read_bytes())
    folders = {"dev", "proc", "sys", "tmp", "var"}
    for path in files:
        parts = path.split("/")[:-1]
        folders.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    entries = [(p, d, b"", 0) for p in sorted(folders)]
    entries.append(("dev/console", c, b"", os.makedev(5, 1)))
    entries.append(("var/run", stat.S_IFLNK | 0o777, b"../run", 0))  # where glibc reads utmp
    entries += [(p, mode, data, 0) for p, (mode, data) in sorted(files.items())]
    dest.write_bytes(gzip.compress(_cpio(entries), compresslevel=1))


# --- libvirt, embedded -------------------------------------------------------------------------


@pytest.fixture
def embed_root() -> Iterator[Path]:
    """A private root for the embedded QEMU driver. Short, because QEMU's monitor and agent
    sockets live under it and a socket path is limited to 107 bytes."""
    root = Path(tempfile.mkdtemp(prefix="gf-virt-", dir="/tmp"))
    (root / "etc").mkdir()
    (root / "etc" / "qemu.conf").write_text(
        # QEMU runs as the test's own user; no cgroups, namespaces or security labels, which
        # a container or a CI runner may not allow
        f'user = "+{os.getuid()}"\n'
        f'group = "+{os.getgid()}"\n'
        "dynamic_ownership = 0\n"
        'security_driver = "none"\n'
        "cgroup_controllers = [ ]\n"
        "namespaces = [ ]\n"
        'stdio_handler = "file"\n'
    )
    # libvirt probes each QEMU binary once per root (seconds); its cached answers are kept in
    # .cache/ and checked by libvirt itself against the binaries' change times
    caps = root / "cache" / "qemu" / "capabilities"
    if CAPS_CACHE.is_dir():
        shutil.copytree(CAPS_CACHE, caps)
    yield root
    if caps.is_dir():
        shutil.rmtree(CAPS_CACHE, ignore_errors=True)
        shutil.copytree(caps, CAPS_CACHE)
    shutil.rmtree(root, ignore_errors=True)


class Console:
    """The guest's serial console, as the file libvirt writes it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def text(self) -> str:
        return self.path.read_text(errors="replace") if self.path.exists() else ""

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str] | None:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.text())
            if m is not None or time.monotonic() > deadline:
                return m
            time.sleep(0.1)


def _retry(call: Callable[[], T], timeout: float) -> T:
    """The agent answers once qemu-ga has opened its port and libvirt has seen it do so."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except DriverError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_linked_clone_boots_sees_its_volumes_and_answers_through_the_agent(
    virtualization: str, embed_root: Path, tmp_path: Path
) -> None:
    from goldfleet.drivers.libvirt import LibvirtDriver

    started = time.monotonic()
    kernel = guest_kernel()
    initrd = tmp_path / "initrd.gz"
    build_initramfs(kernel, guest_agent(), initrd)

    # a real goldfleet store: a sealed base layer holding the marker, a linked clone on it
    qemu = QemuImg()
    layers = LayerStore(tmp_path / "store", qemu)
    layers.ensure()
    volumes = VolumeStore(tmp_path / "store", qemu, layers)
    volumes.ensure()
    raw = tmp_path / "base.raw"
    with raw.open("wb") as fh:
        fh.truncate(32 * MiB)
        fh.write(SYSTEM_MARKER)
    base = layers.import_image(raw, "raw", max_virtual_size=1 << 30)
    layer_file = layers.path(base.digest)
    layer_sha = hashlib.sha256(layer_file.read_bytes()).hexdigest()
    outline = Outline(temp=(8 * MiB,), data=(16 * MiB,))
    volumes.build_clone("c1", CloneKind.LINKED, base.digest, base.virtual_size, outline)
    system, temp, data = (p for _role, _i, p in volumes.volume_paths("c1", outline))
    qemu.write(data, 0, DATA_MARKER, scratch=tmp_path)
    backing = qemu.info(system, "qcow2")["backing-filename"]
    assert backing == f"../../layers/{layer_file.name}"  # relative, as the store makes it

    console = Console(tmp_path / "serial.log")
    spec = DomainSpec(
        name=NAME,
        disks=(  # in no particular order: the driver puts system, temp, data
            DiskSpec(role="data", path=str(data)),
            DiskSpec(role="system", path=str(system), backing=(backing,)),
            DiskSpec(role="temp", path=str(temp)),
        ),
        memory_mib=256,
        vcpus=1,
        boot=KernelBoot(
            kernel=str(kernel / "vmlinuz"), initrd=str(initrd), cmdline="console=ttyS0 quiet"
        ),
        serial_log=str(console.path),
    )
    uri = f"qemu:///embed?root={embed_root}"

    # boot: KVM where it works, else TCG (some nested hosts offer a /dev/kvm too slow to use)
    driver, accel = None, ""
    for accel in ("kvm", "qemu") if virtualization == "kvm" else ("qemu",):
        attempt = LibvirtDriver(uris=[uri], domain_type=accel)
        try:
            assert attempt.define(spec=spec) == uri
        except DriverError as exc:
            if "libvirt-qemu" in exc.message:  # Debian's QEMU driver wants its user to exist
                pytest.fail(f"{exc.message}: run make system-packages, which adds the user")
            raise
        assert attempt.state(name=NAME) == "stopped"
        attempt.start(name=NAME)
        if console.wait_for(r"GOLDFLEET-READY", READY_BUDGET[accel]):
            driver = attempt
            break
        print(f"the guest was not ready under {accel}; console:\n{console.text()}")
        attempt.shutdown(name=NAME, timeout=0)
        attempt.undefine(name=NAME)
        attempt.close()
    assert driver is not None, "the guest never got ready"
    try:
        booted = time.monotonic() - started
        assert driver.state(name=NAME) == "running"
        assert driver.states() == {NAME: "running"}

        # the guest agent, through the driver
        found = _retry(lambda: driver.sessions(names=[NAME]), timeout=30)
        assert found == {
            NAME: [GuestSession(user="alice", since=datetime.fromtimestamp(LOGIN_TIME, tz=UTC))]
        }
        text = "Maintenance at 22:00: please save your work."
        driver.send_message(name=NAME, text=text)
        assert console.wait_for(f"GOLDFLEET-WALL {re.escape(text)}", 10), console.text()
        driver.logoff(name=NAME, user="alice")
        assert console.wait_for("GOLDFLEET-LOGINCTL terminate-user -- alice", 10)
        with pytest.raises(DriverError, match=r"exit code 1.*User nobody is not logged in"):
            driver.logoff(name=NAME, user="nobody")

        # the guest tool (docs/guests.md): installed, run and read back through the agent, its
        # verdict computed by goldfleet's rules
        tool, policy_path = guest.GUEST_TOOL_PATH, guest.GUEST_POLICY_PATH
        assert driver.guest_read(name=NAME, path=tool) is None
        driver.guest_write(name=NAME, path=tool, data=guest.tool_path().read_bytes(), mode=0o755)
        out = driver.guest_exec(name=NAME, argv=[tool, "version"])
        assert (out.exit_code, out.stdout.strip()) == (0, guest.tool_version()), out
        policy = quarantine.parse_policy(GUEST_POLICY)
        d1, d2 = (v.descriptor for v in policy.versions)
        driver.guest_write(
            name=NAME, path=policy_path, data=quarantine.guest_policy_text(policy).encode()
        )
        skip = driver.guest_exec(name=NAME, argv=[tool, "nq-set", "-n", d2])
        assert skip.exit_code == 1 and "not the next version" in skip.stderr, skip
        assert driver.guest_exec(name=NAME, argv=[tool, "nq-set", "-n", d1]).exit_code == 0
        assert driver.guest_read(name=NAME, path=guest.GUEST_DESCRIPTOR_PATH) is None
        assert driver.guest_exec(name=NAME, argv=[tool, "nq-set", d1]).exit_code == 0
        held = driver.guest_read(name=NAME, path=guest.GUEST_DESCRIPTOR_PATH)
        assert held == d1.encode() + b"\n"
        verdict = quarantine.evaluate(policy, held.decode().split("\n")[0])
        assert (verdict.access, verdict.version) == (quarantine.Access.RESTRICTED, "a")
        assert driver.guest_exec(name=NAME, argv=[tool, "nq-set", d2]).exit_code == 0
        held = driver.guest_read(name=NAME, path=guest.GUEST_DESCRIPTOR_PATH)
        assert quarantine.evaluate(policy, held.decode().strip()).access == quarantine.Access.NORMAL

        # a graceful shutdown: through the agent, well before the forced one
        t0 = time.monotonic()
        driver.shutdown(name=NAME, timeout=30)
        assert time.monotonic() - t0 < 25
        assert driver.state(name=NAME) == "stopped"
        assert console.wait_for(r"GOLDFLEET-SHUTDOWN .*-P \+0", 5), console.text()
    finally:
        driver.shutdown(name=NAME, timeout=0)
        driver.undefine(name=NAME)
        assert driver.state(name=NAME) == "undefined"
        driver.close()
    log = console.text()

    # what the guest saw, from its serial console
    block = re.search(r"GOLDFLEET-BLOCK (.*)", log)
    assert block is not None, log
    assert block.group(1).split() == ["vda", "vdb", "vdc"], log
    disks = {n: v.strip() for n, v in re.findall(r"GOLDFLEET-DISK (vd[a-z]+) (.*)", log)}
    assert disks == {
        "vda": f"serial=system sectors={32 * MiB // 512} head={SYSTEM_MARKER.decode()}",
        "vdb": f"serial=temp0 sectors={8 * MiB // 512} head=",
        "vdc": f"serial=data0 sectors={16 * MiB // 512} head={DATA_MARKER.decode()}",
    }, log

    # what the guest wrote landed in the clone's own files; the sealed layer is unchanged
    assert qemu.read(system, MiB, len(SYSTEM_WRITE)) == SYSTEM_WRITE
    assert qemu.read(layer_file, MiB, len(SYSTEM_WRITE)) == bytes(len(SYSTEM_WRITE))
    assert qemu.read(temp, 0, len(TEMP_WRITE)) == TEMP_WRITE
    assert qemu.read(data, 0, len(DATA_MARKER)) == DATA_MARKER
    assert hashlib.sha256(layer_file.read_bytes()).hexdigest() == layer_sha
    print(
        f"a linked clone booted under libvirt ({accel}) in {booted:.1f} s;"
        f" the whole test took {time.monotonic() - started:.1f} s"
    )
