"""A real boot: a goldfleet linked clone started by the libvirt driver under QEMU.

The guest is built here from Debian packages only: the kernel of ``linux-image-cloud-amd64``
(fetched with ``apt-get download``, unpacked with ``dpkg-deb``, cached in ``.cache/boot-guest/``)
and an initramfs assembled in Python around ``busybox-static``. Its ``/init`` loads the virtio
modules, prints what it sees of each disk on the serial console, writes a marker to the system
and temp disks and powers off. The test proves, from the host, that the guest saw the system
volume through its backing layer and the temp and data volumes in order, and that its writes
landed in the clone's own files while the sealed layer stayed unchanged.

libvirt runs embedded in the test process (``qemu:///embed?root=…``): no daemon is needed. KVM is
used where /dev/kvm is usable, QEMU's TCG otherwise; the test is skipped only where neither
exists.
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
from collections.abc import Iterator
from pathlib import Path

import pytest

from goldfleet.domain.model import CloneKind, Outline
from goldfleet.drivers.base import DiskSpec, DomainSpec, KernelBoot
from goldfleet.store.layers import LayerStore
from goldfleet.store.qemu import QemuImg
from goldfleet.store.volumes import VolumeStore

pytestmark = pytest.mark.slow

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "boot-guest"
KERNEL_META = "linux-image-cloud-amd64"
# the modules a kernel needs to see virtio disks; any of them may also be built in
WANTED_MODULES = ("virtio_pci", "virtio_blk")
SYSTEM_MARKER = b"GOLDFLEET-SYSTEM-MARKER-BASE-LAYER"
DATA_MARKER = b"GOLDFLEET-DATA-MARKER-KEEP-ME"
SYSTEM_WRITE = b"GOLDFLEET-GUEST-WROTE-SYSTEM"
TEMP_WRITE = b"GOLDFLEET-GUEST-WROTE-TEMP"
BOOT_DEADLINE = 90.0  # seconds for the guest to power itself off (TCG is slow)


# --- virtualization -----------------------------------------------------------------------


def _kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


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
    return "kvm" if _kvm_usable() else "tcg"


# --- the guest kernel, from Debian's package, cached ----------------------------------------


def _run(argv: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _kernel_package() -> str | None:
    """The versioned kernel package the meta package depends on, as apt knows it."""
    proc = subprocess.run(
        ["apt-cache", "depends", KERNEL_META], capture_output=True, text=True, timeout=60
    )
    m = re.search(r"Depends: (linux-image-[0-9][^\s]*-cloud-amd64)\b", proc.stdout)
    return m.group(1) if m else None


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


def _fetch_kernel(package: str, dest: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="gf-kernel-") as work:
        w = Path(work)
        _run(["apt-get", "download", "-q", package], cwd=w)
        debs = list(w.glob(f"{package}_*.deb"))
        if len(debs) != 1:
            pytest.fail(f"apt-get download {package} gave {debs}")
        _run(["dpkg-deb", "-x", str(debs[0]), str(w / "root")])
        kernels = list((w / "root" / "boot").glob("vmlinuz-*"))
        if len(kernels) != 1:
            pytest.fail(f"{package} holds {len(kernels)} kernels, expected one")
        config = (w / "root" / "boot").glob("config-*")
        modules = {
            ko.name.removesuffix(".ko").replace("-", "_"): ko
            for ko in (w / "root").glob("lib/modules/*/kernel/**/*.ko")
        }
        order = _load_order(modules, WANTED_MODULES)
        if not order:
            text = "".join(c.read_text() for c in config)
            if "CONFIG_VIRTIO_BLK=y" not in text:
                pytest.fail(f"{package} has neither a virtio_blk module nor it built in")
        part = dest.with_name(dest.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        (part / "modules").mkdir(parents=True)
        shutil.copyfile(kernels[0], part / "vmlinuz")
        for name in order:
            shutil.copyfile(modules[name], part / "modules" / f"{name}.ko")
        (part / "modules" / "order").write_text("".join(f"{n}\n" for n in order))
        part.rename(dest)


def guest_kernel() -> Path:
    """A folder with ``vmlinuz`` and ``modules/`` (``order`` lists the load order)."""
    package = _kernel_package()
    if package is not None:
        dest = CACHE / package
        if not (dest / "vmlinuz").is_file():
            CACHE.mkdir(parents=True, exist_ok=True)
            _fetch_kernel(package, dest)
        return dest
    cached = sorted(p for p in CACHE.glob("linux-image-*") if (p / "vmlinuz").is_file())
    if cached:
        return cached[-1]
    pytest.fail(
        f"apt knows no {KERNEL_META} and nothing is cached in {CACHE}: run apt-get update"
        " (make system-packages does)"
    )


# --- the initramfs ---------------------------------------------------------------------------

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
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
printf '%s' "$SYSTEM_WRITE" | dd of=/dev/vda bs=512 seek=2048 conv=sync,fsync 2>/dev/null
printf '%s' "$TEMP_WRITE" | dd of=/dev/vdb bs=512 conv=sync,fsync 2>/dev/null
sync
echo GOLDFLEET-DONE
poweroff -f
"""


def _is_static(binary: bytes) -> bool:
    """An ELF file without a PT_INTERP program header needs no dynamic loader."""
    phoff = struct.unpack_from("<Q", binary, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", binary, 0x36)
    return all(
        struct.unpack_from("<I", binary, phoff + i * phentsize)[0] != 3 for i in range(phnum)
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


def build_initramfs(kernel_dir: Path, dest: Path) -> None:
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(busybox):
        pytest.fail("busybox is missing: install Debian's busybox-static")
    binary = Path(busybox).read_bytes()
    if not _is_static(binary):
        pytest.fail(f"{busybox} is dynamically linked: install Debian's busybox-static")
    init = INIT.replace("$SYSTEM_WRITE", SYSTEM_WRITE.decode()).replace(
        "$TEMP_WRITE", TEMP_WRITE.decode()
    )
    d, f, c = stat.S_IFDIR | 0o755, stat.S_IFREG, stat.S_IFCHR | 0o600
    entries = [
        ("bin", d, b"", 0),
        ("dev", d, b"", 0),
        ("dev/console", c, b"", os.makedev(5, 1)),
        ("proc", d, b"", 0),
        ("sys", d, b"", 0),
        ("lib", d, b"", 0),
        ("lib/modules", d, b"", 0),
        ("bin/busybox", f | 0o755, binary, 0),
        ("init", f | 0o755, init.encode(), 0),
    ]
    for ko in sorted((kernel_dir / "modules").iterdir()):
        entries.append((f"lib/modules/{ko.name}", f | 0o644, ko.read_bytes(), 0))
    dest.write_bytes(gzip.compress(_cpio(entries), compresslevel=1))


# --- libvirt, embedded -------------------------------------------------------------------------


@pytest.fixture
def embed_root() -> Iterator[Path]:
    """A private root for the embedded QEMU driver. Short, because QEMU's monitor and agent
    sockets live under it and a socket path is limited to 107 bytes."""
    root = Path(tempfile.mkdtemp(prefix="gf-virt-", dir="/tmp"))
    (root / "etc").mkdir()
    uid, gid = os.getuid(), os.getgid()
    (root / "etc" / "qemu.conf").write_text(
        # QEMU runs as the test's own user; no cgroups, namespaces or security labels, which
        # a container or a CI runner may not allow
        f'user = "+{uid}"\n'
        f'group = "+{gid}"\n'
        "dynamic_ownership = 0\n"
        'security_driver = "none"\n'
        "cgroup_controllers = [ ]\n"
        "namespaces = [ ]\n"
        'stdio_handler = "file"\n'
    )
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_linked_clone_boots_and_sees_its_volumes(
    virtualization: str, embed_root: Path, tmp_path: Path
) -> None:
    from goldfleet.drivers.libvirt import LibvirtDriver

    started = time.monotonic()
    kernel_dir = guest_kernel()
    initrd = tmp_path / "initrd.gz"
    build_initramfs(kernel_dir, initrd)

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

    serial = tmp_path / "serial.log"
    spec = DomainSpec(
        name="gf-boot",
        disks=(
            DiskSpec(role="data", path=str(data)),
            DiskSpec(role="system", path=str(system), backing=(backing,)),
            DiskSpec(role="temp", path=str(temp)),
        ),
        memory_mib=256,
        vcpus=1,
        boot=KernelBoot(
            kernel=str(kernel_dir / "vmlinuz"),
            initrd=str(initrd),
            cmdline="console=ttyS0 quiet",
        ),
        serial_log=str(serial),
    )
    driver = LibvirtDriver(uris=[f"qemu:///embed?root={embed_root}"])
    try:
        host = driver.define(spec=spec)
        assert host == f"qemu:///embed?root={embed_root}"
        driver.start(name="gf-boot")
        deadline = time.monotonic() + BOOT_DEADLINE
        while driver.state(name="gf-boot") == "running" and time.monotonic() < deadline:
            time.sleep(0.2)
        log = serial.read_text(errors="replace") if serial.exists() else ""
        assert driver.state(name="gf-boot") == "stopped", f"guest did not power off:\n{log}"
        driver.undefine(name="gf-boot")
    finally:
        if driver.state(name="gf-boot") == "running":
            driver.shutdown(name="gf-boot", timeout=0)
        driver.undefine(name="gf-boot")
        driver.close()
    booted = time.monotonic() - started

    # what the guest saw, from its serial console
    assert "GOLDFLEET-DONE" in log, log
    block = re.search(r"GOLDFLEET-BLOCK (.*)", log)
    assert block is not None, log
    assert block.group(1).split() == ["vda", "vdb", "vdc"], log
    disks = dict(re.findall(r"GOLDFLEET-DISK (vd[a-z]+) (.*)", log))
    assert (
        f"serial=system sectors={32 * MiB // 512} head={SYSTEM_MARKER.decode()}"
        == disks["vda"].strip()
    ), log
    assert f"serial=temp0 sectors={8 * MiB // 512} head=" == disks["vdb"].strip(), log
    assert (
        f"serial=data0 sectors={16 * MiB // 512} head={DATA_MARKER.decode()}"
        == disks["vdc"].strip()
    ), log

    # what the guest wrote landed in the clone's own files; the sealed layer is unchanged
    assert qemu.read(system, MiB, len(SYSTEM_WRITE)) == SYSTEM_WRITE
    assert qemu.read(layer_file, MiB, len(SYSTEM_WRITE), fmt="qcow2") == bytes(len(SYSTEM_WRITE))
    assert qemu.read(temp, 0, len(TEMP_WRITE)) == TEMP_WRITE
    assert qemu.read(data, 0, len(DATA_MARKER)) == DATA_MARKER
    assert hashlib.sha256(layer_file.read_bytes()).hexdigest() == layer_sha
    print(f"booted a linked clone under {virtualization} in {booted:.1f} s")
