"""Inspection of images from outside: every one is treated as hostile.

An image is refused, before any byte of it enters the layer store, when its claimed format does
not match its content, when qemu-img cannot open it within resource limits (corrupt header,
unknown incompatible qcow2 features), when it names a backing file or an external data file,
when it is marked corrupt or fails ``qemu-img check``, or when its virtual size is above the limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from goldfleet.domain.sizes import format_size
from goldfleet.errors import BadImage, InvalidInput
from goldfleet.store.qemu import FORMATS, Limits, QemuError, QemuImg

# Magic numbers of formats that must never be taken as raw disk content by mistake.
_MAGICS: dict[str, bytes] = {
    "qcow2": b"QFI\xfb",
    "qed": b"QED\x00",
    "vmdk": b"KDMV",
    "vdi": b"<<< ",
    "vhdx": b"vhdxfile",
    "luks": b"LUKS\xba\xbe",
    "vpc": b"conectix",
}


@dataclass(frozen=True, slots=True)
class Inspection:
    fmt: str
    virtual_size: int
    file_size: int


def sniff(path: Path) -> str | None:
    """The format a file's first bytes claim, or None for none we know (raw content)."""
    with path.open("rb") as f:
        head = f.read(16)
    for fmt, magic in _MAGICS.items():
        if head.startswith(magic):
            return fmt
    return None


def inspect_image(
    qemu: QemuImg, path: Path, fmt: str, *, max_virtual_size: int, limits: Limits | None = None
) -> Inspection:
    """Check an outside image; return what was learnt or raise :class:`BadImage`."""
    if fmt not in FORMATS:
        raise InvalidInput(f"format {fmt!r} is not supported: use one of {', '.join(FORMATS)}")
    limits = limits or Limits()
    file_size = path.stat().st_size
    if file_size == 0:
        raise BadImage("the image is empty")
    claimed = sniff(path)
    if fmt == "raw" and claimed is not None:
        raise BadImage(
            f"the image was given as raw but its header says {claimed}; import it with"
            f" --format {claimed}"
            if claimed in FORMATS
            else f"the image was given as raw but its header says {claimed}, which goldfleet does"
            " not import; convert it to qcow2 or raw first"
        )
    if fmt == "qcow2" and claimed != "qcow2":
        raise BadImage(
            "the image was given as qcow2 but has no qcow2 header"
            + (
                f" (its header says {claimed})"
                if claimed
                else "; if it is a raw disk, use --format raw"
            )
        )
    try:
        info = qemu.info(path, fmt, limits=limits)
    except QemuError as exc:
        raise BadImage(f"qemu-img cannot read the image safely: {exc.message}") from exc
    if info.get("format") != fmt:
        raise BadImage(f"qemu-img reads the image as {info.get('format')}, not {fmt}")
    if "backing-filename" in info or "full-backing-filename" in info:
        raise BadImage(
            f"the image has a backing file ({info.get('backing-filename')!r}); import a"
            " standalone image (qemu-img convert it first)"
        )
    specific = (info.get("format-specific") or {}).get("data") or {}
    if "data-file" in specific or specific.get("data-file-raw"):
        raise BadImage("the image uses an external data file; import a self-contained image")
    if specific.get("corrupt"):
        raise BadImage("the image is marked corrupt in its header")
    virtual_size = int(info.get("virtual-size", 0))
    if virtual_size <= 0:
        raise BadImage("the image has no virtual size")
    if virtual_size > max_virtual_size:
        raise BadImage(
            f"the image's virtual size {format_size(virtual_size)} is above the limit of"
            f" {format_size(max_virtual_size)} (setting max_virtual_size)"
        )
    if fmt == "qcow2":
        try:
            report = qemu.check(path, fmt, limits=limits)
        except QemuError as exc:
            raise BadImage(f"qemu-img check cannot read the image: {exc.message}") from exc
        if report.get("corruptions", 0) or report.get("check-errors", 0):
            raise BadImage(
                f"qemu-img check found {report.get('corruptions', 0)} corruptions and"
                f" {report.get('check-errors', 0)} errors in the image"
            )
    return Inspection(fmt=fmt, virtual_size=virtual_size, file_size=file_size)
