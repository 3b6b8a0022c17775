"""Names, layer file names and version references: strict, table-driven, no I/O."""

from __future__ import annotations

import hashlib
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from goldfleet.domain.names import (
    NAME_RE,
    check_name,
    digest_of_filename,
    layer_filename,
    numbered_names,
    parse_version,
    parse_version_ref,
)
from goldfleet.errors import InvalidInput

HEX = "0123456789abcdef" * 4  # 64 hex digits
ALLOWED = set(string.ascii_lowercase + string.digits + "._-")

# --- check_name ---------------------------------------------------------------------------

VALID_NAMES = [
    "a",
    "0",
    "web",
    "web-01",
    "win11.base_v2",
    "9lives",
    "a-",  # a trailing separator is allowed by the pattern
    "a..",  # dots after the first character are plain characters, never a path
    "a" * 63,
    "0" * 63,
    "a" + "._-" * 20 + "z",
]

INVALID_NAMES = [
    ("", "empty"),
    ("../x", "path traversal"),
    ("..", "parent directory"),
    (".", "current directory"),
    ("a/b", "slash"),
    ("/etc", "absolute path"),
    ("a/../b", "traversal inside"),
    ("a\\b", "backslash"),
    (".hidden", "leading dot"),
    ("-rf", "leading dash (option injection)"),
    ("_x", "leading underscore"),
    ("Web", "uppercase"),
    ("WEB", "all uppercase"),
    ("a" * 64, "64 characters"),
    ("a b", "space"),
    (" a", "leading space"),
    ("a ", "trailing space"),
    ("a\n", "trailing newline"),
    ("a\x00b", "NUL byte"),
    ("a\tb", "tab"),
    ("a:b", "colon"),
    ("a*", "glob"),
    ("~root", "tilde"),
    ("$(id)", "shell substitution"),
    ("a;b", "semicolon"),
    ("café", "non-ASCII letter"),
    ("naïve", "non-ASCII letter inside"),
    ("ünï", "non-ASCII first letter"),
    ("٣", "Arabic-Indic digit"),
    ("ａｂｃ", "fullwidth letters"),
    ("\u212a", "Kelvin sign (case-folds to k)"),
    ("ı", "dotless i"),
    ("a\u200b", "zero-width space"),
    ("web\u2215x", "division slash lookalike"),
]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_check_name_accepts(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(("name", "why"), INVALID_NAMES, ids=[why for _, why in INVALID_NAMES])
def test_check_name_refuses(name: str, why: str) -> None:
    with pytest.raises(InvalidInput) as info:
        check_name(name, "clone name")
    message = info.value.message
    assert message.startswith("clone name ")
    assert repr(name) in message
    assert "1 to 63 characters" in message


@pytest.mark.parametrize("value", [None, 5, b"web", ["web"]])
def test_check_name_refuses_non_strings(value: object) -> None:
    with pytest.raises(InvalidInput):
        check_name(value)  # type: ignore[arg-type]


def test_check_name_default_kind_in_message() -> None:
    with pytest.raises(InvalidInput, match=r"^name 'A' is not valid"):
        check_name("A")


@given(st.text(max_size=80))
def test_any_accepted_name_is_safe(value: str) -> None:
    try:
        check_name(value)
    except InvalidInput:
        return
    assert NAME_RE.fullmatch(value)
    assert 1 <= len(value) <= 63
    assert "/" not in value and "\\" not in value
    assert value not in (".", "..")
    assert value[0] not in ".-_"
    assert set(value) <= ALLOWED


@given(st.from_regex(NAME_RE, fullmatch=True))
def test_every_name_of_the_pattern_is_accepted(value: str) -> None:
    assert check_name(value) == value


@given(
    st.from_regex(NAME_RE, fullmatch=True),
    st.characters(blacklist_characters=sorted(ALLOWED)),
    st.data(),
)
def test_one_foreign_character_is_refused(value: str, bad: str, data: st.DataObject) -> None:
    at = data.draw(st.integers(min_value=0, max_value=len(value)))
    with pytest.raises(InvalidInput):
        check_name(value[:at] + bad + value[at:])


# --- layer file names ---------------------------------------------------------------------


def test_layer_filename() -> None:
    assert layer_filename(f"sha256:{HEX}") == f"sha256-{HEX}.qcow2"


@pytest.mark.parametrize(
    "digest",
    [
        "",
        HEX,
        f"sha256-{HEX}",
        f"sha512:{HEX}",
        f"SHA256:{HEX}",
        f"sha256:{HEX.upper()}",
        f"sha256:{HEX[:-1]}",
        f"sha256:{HEX}0",
        f"sha256:{HEX}\n",
        f"sha256:{HEX[:-1]}g",
        "sha256:../../etc/passwd",
        f"sha256:{HEX}/../x",
    ],
)
def test_layer_filename_refuses(digest: str) -> None:
    with pytest.raises(InvalidInput, match="is not a layer digest"):
        layer_filename(digest)


@pytest.mark.parametrize(
    "filename",
    [
        "",
        f"sha256-{HEX}",
        f"sha256-{HEX}.raw",
        f"sha256-{HEX}.qcow2.new",
        f"sha256-{HEX.upper()}.qcow2",
        f"sha256:{HEX}.qcow2",
        f"sha256-{HEX[:-1]}.qcow2",
        f".import-{HEX[:16]}.qcow2",
        f".overlay-{HEX[:16]}.qcow2",
        f"../sha256-{HEX}.qcow2",
        f"layers/sha256-{HEX}.qcow2",
        f"sha256-{HEX}.QCOW2",
    ],
)
def test_digest_of_filename_rejects(filename: str) -> None:
    assert digest_of_filename(filename) is None


@given(st.binary(max_size=64))
def test_layer_filename_round_trip(content: bytes) -> None:
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    filename = layer_filename(digest)
    assert "/" not in filename
    assert filename.startswith("sha256-") and filename.endswith(".qcow2")
    assert digest_of_filename(filename) == digest


# --- versions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "number"),
    [("v1", 1), ("1", 1), ("v42", 42), ("42", 42), (" v3 ", 3), ("v999999999", 999999999)],
)
def test_parse_version(text: str, number: int) -> None:
    assert parse_version(text) == number


@pytest.mark.parametrize(
    "text",
    [
        *["", " ", "v", "v0", "0", "v01", "V1", "v-1", "-1", "v1.0", "vv1", "v1x", "x1"],
        *["v1000000000", "١", "v٣", "v 1", "v1\nv2"],
    ],
)
def test_parse_version_refuses(text: str) -> None:
    with pytest.raises(InvalidInput, match="is not valid: use v1, v2"):
        parse_version(text)


@given(st.integers(min_value=1, max_value=999_999_999))
def test_parse_version_round_trip(n: int) -> None:
    assert parse_version(f"v{n}") == n
    assert parse_version(str(n)) == n


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("base", ("base", None)),
        ("base:v2", ("base", 2)),
        ("base:3", ("base", 3)),
        ("win-11.x:v10", ("win-11.x", 10)),
    ],
)
def test_parse_version_ref(ref: str, expected: tuple[str, int | None]) -> None:
    assert parse_version_ref(ref) == expected


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ("Base:v1", "template name 'Base' is not valid"),
        (":v1", "template name '' is not valid"),
        ("../x:v1", "template name '../x' is not valid"),
        ("a/b", "template name 'a/b' is not valid"),
        ("base:", "version '' is not valid"),
        ("base:v0", "version 'v0' is not valid"),
        ("base:v1:v2", "version 'v1:v2' is not valid"),
        ("base:latest", "version 'latest' is not valid"),
    ],
)
def test_parse_version_ref_refuses(ref: str, words: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_version_ref(ref)
    assert words in info.value.message


# --- numbered names -----------------------------------------------------------------------


def test_numbered_names_from_one() -> None:
    assert numbered_names("web", set(), 3) == ["web-001", "web-002", "web-003"]


def test_numbered_names_skip_taken() -> None:
    taken = {"web-001", "web-003", "other-002"}
    assert numbered_names("web", taken, 3) == ["web-002", "web-004", "web-005"]


def test_numbered_names_zero() -> None:
    assert numbered_names("web", {"web-001"}, 0) == []


def test_numbered_names_widen_only_past_999() -> None:
    names = numbered_names("web", set(), 1000)
    assert names[0] == "web-001"
    assert names[998:] == ["web-999", "web-1000"]
    assert len(set(names)) == 1000


def test_numbered_names_never_reuse_a_taken_number() -> None:
    taken = {f"web-{i:03d}" for i in range(1, 501)}
    names = numbered_names("web", taken, 500)
    numbers = [int(name.rsplit("-", 1)[1]) for name in names]
    assert numbers == list(range(501, 1001))


def test_numbered_names_refuse_a_prefix_too_long_for_a_name() -> None:
    assert numbered_names("a" * 59, set(), 1) == ["a" * 59 + "-001"]
    with pytest.raises(InvalidInput, match="clone name"):
        numbered_names("a" * 60, set(), 1)


@given(
    st.sets(st.integers(min_value=1, max_value=60), max_size=40),
    st.integers(min_value=0, max_value=30),
)
def test_numbered_names_are_fresh_unique_and_valid(used: set[int], count: int) -> None:
    taken = {f"pool-{i:03d}" for i in used}
    names = numbered_names("pool", taken, count)
    assert len(names) == count
    assert len(set(names)) == count
    assert not set(names) & taken
    assert names == sorted(names)
    for name in names:
        assert check_name(name) == name
        assert name.startswith("pool-")
