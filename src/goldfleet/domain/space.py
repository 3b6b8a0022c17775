"""Disk space: whether a piece of large work fits, and how a lack of space is said to an admin.

Large work (an import, a bundle, a site's sync, full clones) is refused before it starts when
the disk cannot hold it, rather than failing half way: a half-written file helps nobody, and a
disk filled to the last byte also stops the database from recording anything. The estimate
the caller gives is what the work writes; the rule adds a margin for what it does not count
(qcow2 metadata, the database's own writes). Pure rules; the measuring is in store/space.py.
"""

from __future__ import annotations

from goldfleet.errors import NoSpace

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
# left free beyond every estimate, so that the database can still record the work (and its
# failure) once the files are written
RESERVE = 4 * MiB
MARGIN_PERCENT = 5  # of the estimate: qcow2 metadata and rounding the estimate does not count


BLANK_VOLUME = 256 * KiB  # an empty qcow2 temp or data volume: its header and first tables


def full_clones_estimate(count: int, copy: int, *, copy_made: bool, volumes: int) -> int:
    """Bytes that ``count`` new full clones write: a flattened copy of the chain each (``copy``
    bytes), once more for the shared copy they are made from unless it is ``copy_made``, and
    their ``volumes`` empty temp and data volumes each."""
    return (count + (0 if copy_made else 1)) * copy + count * volumes * BLANK_VOLUME


def show_bytes(n: int) -> str:
    """Bytes as an admin reads them: ``0 B``, ``512 KiB``, ``12 MiB``, ``1.5 GiB``."""
    for unit, scale in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            shown = f"{n / scale:.1f}".removesuffix(".0")
            return f"{shown} {unit}"
    return f"{max(n, 0)} B"


def needed(estimate: int) -> int:
    """The free space work of ``estimate`` bytes asks for: the estimate, a margin, a reserve."""
    return max(estimate, 0) * (100 + MARGIN_PERCENT) // 100 + RESERVE


def room_problem(what: str, estimate: int, free: int, where: str) -> str | None:
    """Why ``what`` (writing about ``estimate`` bytes at ``where``, which has ``free`` bytes
    free) must not start; None when it fits."""
    need = needed(estimate)
    if need <= free:
        return None
    return (
        f"not enough space for {what} at {where}: it needs {show_bytes(need)}"
        f" ({show_bytes(estimate)} and a margin), {show_bytes(free)} free; free space there"
        " and try again; nothing was changed"
    )


def check_room(what: str, estimate: int, free: int, where: str) -> None:
    """Refuse work that does not fit (:class:`NoSpace`), naming the space needed and free."""
    problem = room_problem(what, estimate, free, where)
    if problem is not None:
        raise NoSpace(problem)


def disk_full(where: str, free: int | None) -> str:
    """The reason an operation paused on a full disk: ``disk full at /srv/gf: 12 MiB free``."""
    if free is None:  # the disk is not this machine's to measure (a database server)
        return f"disk full at {where}"
    return f"disk full at {where}: {show_bytes(free)} free"
