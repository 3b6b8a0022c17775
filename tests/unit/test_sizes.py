"""Sizes as admins write them: parsing, refusing and formatting, no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from goldfleet.domain.sizes import format_size, parse_rate, parse_size
from goldfleet.errors import InvalidInput

K, M, G, T = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512", 512),
        ("4096", 4096),
        ("1", 512),  # rounded up to a sector
        ("511", 512),
        ("513", 1024),
        ("1000", 1024),
        ("1K", K),
        ("1k", K),
        ("1KB", K),
        ("1KiB", K),
        ("1kib", K),
        ("0.5K", 512),
        ("1.5K", 1536),
        ("512M", 512 * M),
        ("10G", 10 * G),
        ("10g", 10 * G),
        ("10 G", 10 * G),
        ("10GiB", 10 * G),
        (" 20G ", 20 * G),
        ("1.5T", 3 * T // 2),
        ("2T", 2 * T),
        (4096, 4096),
        (1000, 1024),
        (1, 512),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "G",
        "abc",
        "ten",
        "10X",
        "10P",
        "10GG",
        "10 G B",
        "1e3",
        "0x10",
        "1,5G",
        "1..5G",
        ".5G",
        "5.G",
        "-5",
        "-1G",
        "+5",
        "nan",
        "inf",
        "10G; rm -rf /",
        "١٠G",  # Arabic-Indic digits
    ],
)
def test_parse_size_refuses_junk(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_size(text)
    assert info.value.message == f"size {text!r} is not valid: write e.g. 20G, 512M or 1T"


@pytest.mark.parametrize("value", ["0", "0G", "0.0", "0.0K", 0, -1, -(1 << 40)])
def test_parse_size_refuses_zero_and_negative(value: str | int) -> None:
    with pytest.raises(InvalidInput, match="must be larger than zero"):
        parse_size(value)


def test_parse_size_refuses_above_maximum() -> None:
    with pytest.raises(InvalidInput) as info:
        parse_size("3T", maximum=2 * T)
    assert info.value.message == "size '3T' is above the limit of 2T"


def test_parse_size_accepts_exactly_the_maximum() -> None:
    assert parse_size("2T", maximum=2 * T) == 2 * T
    assert parse_size(2 * T, maximum=2 * T) == 2 * T


def test_parse_size_maximum_applies_after_rounding() -> None:
    with pytest.raises(InvalidInput, match="above the limit"):
        parse_size(1025, maximum=1024)


def test_parse_size_refuses_a_huge_number_as_input_error() -> None:
    """A number too large even for a float must be refused as input, not crash (HTTP 500)."""
    with pytest.raises(InvalidInput):
        parse_size("9" * 400)


@pytest.mark.parametrize(
    ("text", "at_least"),
    [("9007199254740993", 9007199254740993), ("1.0001K", 1025)],
    ids=["beyond-float-precision", "fraction-of-a-byte"],
)
def test_parse_size_never_rounds_down(text: str, at_least: int) -> None:
    assert parse_size(text) >= at_least


@given(st.integers(min_value=1, max_value=1 << 60))
def test_parse_size_of_bytes_rounds_up_to_one_sector(n: int) -> None:
    value = parse_size(n)
    assert value % 512 == 0
    assert n <= value < n + 512


@given(st.integers(min_value=1, max_value=1 << 53))
def test_parse_size_of_a_byte_count_string_equals_the_int(n: int) -> None:
    assert parse_size(str(n)) == parse_size(n)


@given(st.text(max_size=30))
def test_parse_size_only_ever_refuses_with_invalid_input(text: str) -> None:
    try:
        value = parse_size(text)
    except InvalidInput:
        return
    assert value > 0
    assert value % 512 == 0


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0B"),
        (1, "1B"),
        (512, "512B"),
        (1023, "1023B"),
        (K, "1K"),
        (1536, "1.5K"),
        (M, "1M"),
        (512 * M, "512M"),
        (G, "1G"),
        (10 * G, "10G"),
        (1024 * G, "1T"),
        (3 * T // 2, "1.5T"),
        (2 * T, "2T"),
        (5000 * T, "5000T"),
    ],
)
def test_format_size(value: int, text: str) -> None:
    assert format_size(value) == text


@given(st.sampled_from([K, M, G]), st.integers(min_value=1, max_value=1023))
def test_format_then_parse_round_trips_whole_units(unit: int, n: int) -> None:
    assert parse_size(format_size(n * unit)) == n * unit


@given(st.integers(min_value=1, max_value=1_000_000))
def test_format_then_parse_round_trips_whole_terabytes(n: int) -> None:
    assert parse_size(format_size(n * T)) == n * T


@given(st.integers(min_value=1, max_value=1 << 50))
def test_format_size_is_close(value: int) -> None:
    """Not exact past one decimal, but never off by more than 5 % (and parseable)."""
    shown = parse_size(format_size(value))
    assert abs(shown - value) <= max(512, value // 20)


def test_a_fraction_of_a_byte_rounds_up_to_one_sector() -> None:
    assert parse_size("0.0001K") == 512


@pytest.mark.parametrize(
    ("text", "expected"),
    [("50MB/s", 50 * M), ("50M", 50 * M), ("10 MiB / s", 10 * M), ("1.5G/sec", 3 * G // 2)],
)
def test_rates(text, expected):
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["", "fast", "0/s", "-1M/s", "50MB/h", "1P/s"])
def test_bad_rates_are_refused(text):
    with pytest.raises(InvalidInput, match="bandwidth"):
        parse_rate(text)
