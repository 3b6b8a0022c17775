"""Whether large work fits on a disk, and how a lack of space is said (domain/space.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from goldfleet.domain.space import (
    BLANK_VOLUME,
    RESERVE,
    check_room,
    disk_full,
    full_clones_estimate,
    needed,
    room_problem,
    show_bytes,
)
from goldfleet.errors import NoSpace

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@pytest.mark.parametrize(
    ("n", "shown"),
    [
        (0, "0 B"),
        (-5, "0 B"),
        (1000, "1000 B"),
        (KiB, "1 KiB"),
        (512 * KiB, "512 KiB"),
        (12 * MiB, "12 MiB"),
        (12 * MiB + 300 * KiB, "12.3 MiB"),
        (3 * GiB // 2, "1.5 GiB"),
        (5 << 40, "5 TiB"),
    ],
)
def test_bytes_are_shown_in_binary_units(n: int, shown: str) -> None:
    assert show_bytes(n) == shown


def test_the_space_needed_is_the_estimate_a_margin_and_the_reserve() -> None:
    assert needed(0) == RESERVE
    assert needed(100 * MiB) == 105 * MiB + RESERVE
    assert needed(-1) == RESERVE  # an estimate never makes the need smaller than the reserve


@given(st.integers(0, 1 << 50), st.integers(0, 1 << 50))
def test_work_fits_exactly_when_its_need_is_free(estimate: int, free: int) -> None:
    problem = room_problem("the import", estimate, free, "/srv/gf/store")
    assert (problem is None) == (needed(estimate) <= free)


def test_a_refusal_names_the_work_the_disk_the_need_and_the_free_space() -> None:
    problem = room_problem("3 full clones of base", 20 * MiB, 9 * MiB, "/srv/gf/store")
    assert problem == (
        "not enough space for 3 full clones of base at /srv/gf/store: it needs 25 MiB"
        " (20 MiB and a margin), 9 MiB free; free space there and try again; nothing was"
        " changed"
    )
    with pytest.raises(NoSpace) as refused:
        check_room("3 full clones of base", 20 * MiB, 9 * MiB, "/srv/gf/store")
    assert refused.value.message == problem and refused.value.status_code == 409
    check_room("3 full clones of base", 20 * MiB, 25 * MiB, "/srv/gf/store")  # fits: no error


def test_a_full_disk_is_said_with_its_place_and_what_is_free() -> None:
    assert disk_full("/srv/gf", 12 * MiB) == "disk full at /srv/gf: 12 MiB free"
    assert disk_full("/srv/gf", 0) == "disk full at /srv/gf: 0 B free"
    assert disk_full("the database server", None) == "disk full at the database server"


def test_full_clones_need_a_copy_each_and_the_shared_copy_once() -> None:
    assert full_clones_estimate(3, 10 * MiB, copy_made=False, volumes=0) == 40 * MiB
    assert full_clones_estimate(3, 10 * MiB, copy_made=True, volumes=0) == 30 * MiB
    assert full_clones_estimate(3, 10 * MiB, copy_made=True, volumes=2) == (
        30 * MiB + 6 * BLANK_VOLUME
    )
