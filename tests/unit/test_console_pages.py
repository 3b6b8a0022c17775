"""The console's pure helpers: the layer chain's picture and where a login may send the
browser (docs/console.md)."""

from __future__ import annotations

from types import SimpleNamespace

from goldfleet.web._console import _local, chain_svg, csrf_of, policy_line


def version(number: int, chain: list[str], clones: int = 0, current: bool = False):
    return SimpleNamespace(
        number=number, name=f"v{number}", chain=chain, clones=clones, current=current
    )


def test_the_chain_puts_each_layer_in_one_column_and_marks_the_shared_ones() -> None:
    base, mid, top2, top3 = "sha256:" + "a" * 64, "sha256:" + "b" * 64, "sha256:c", "sha256:d"
    versions = [
        version(1, [base]),
        version(2, [top2, mid, base], clones=5),
        version(3, [top3, mid, base], clones=7, current=True),
    ]
    sizes = {base: 4 << 30, mid: 1 << 20, top2: 1 << 10, top3: 0}
    drawn = chain_svg(versions, sizes)
    assert [lay["digest"] for lay in drawn["layers"]] == [base, mid, top2, top3]  # base first
    by_digest = {lay["digest"]: lay for lay in drawn["layers"]}
    assert by_digest[base]["versions"] == ["v1", "v2", "v3"] and by_digest[base]["shared"]
    assert by_digest[mid]["shared"] and not by_digest[top3]["shared"]
    assert by_digest[base]["size"] == "4.0 GiB"
    assert by_digest[base]["bar"] > by_digest[mid]["bar"] >= 4  # sizes drawn to scale
    rows = {row["name"]: row for row in drawn["rows"]}
    assert [row["name"] for row in drawn["rows"]] == ["v3", "v2", "v1"]  # newest on top
    assert len(rows["v3"]["cells"]) == 3 and rows["v3"]["current"] and rows["v3"]["clones"] == 7
    # v2 and v3 share base and mid: their boxes stand in the same columns
    assert {c["x"] for c in rows["v2"]["cells"]} & {c["x"] for c in rows["v3"]["cells"]} == {
        by_digest[base]["x"],
        by_digest[mid]["x"],
    }


def test_a_login_sends_the_browser_only_to_a_page_of_the_console() -> None:
    assert _local("/ui/clones?state=failed") == "/ui/clones?state=failed"
    for elsewhere in ("https://evil.example/", "//evil.example/ui/", "/ui//evil", "/health", ""):
        assert _local(elsewhere) == "/ui/"


def test_the_csrf_token_is_the_sessions_own() -> None:
    assert csrf_of("gs_one") == csrf_of("gs_one") != csrf_of("gs_two")
    assert "gs_one" not in csrf_of("gs_one")


def test_the_policy_line_shows_what_applies_to_the_operations_kind() -> None:
    policy = {
        "logoff": "wait",
        "grace_seconds": 600.0,
        "message": "This desktop will be updated",
        "max_parallel": 1,
        "deadline": None,
    }
    assert policy_line("clone.start", policy) == [("max_parallel", 1)]
    assert policy_line("clone.message", policy) == [
        ("max_parallel", 1),
        ("message", "This desktop will be updated"),
    ]
    assert [k for k, _ in policy_line("template.exit", policy)] == [
        "grace_seconds",
        "logoff",
        "max_parallel",
        "message",
    ]
    assert policy_line("clone.start", None) == []
