"""Bundles bound to their project, checked without importing, and policy-only bundles that say
what they change (issue 14 points 8, 9 and 10), between real servers through the CLI."""

from __future__ import annotations

import json
import os
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sitekit import MiB, cli, make_raw, start_servers


@pytest.fixture
def servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Project A's server, project C's server and a receiver B, each real, on its own home."""
    monkeypatch.setenv("GOLDFLEET_HOME", str(tmp_path / "unused"))
    made = start_servers(tmp_path, {"a": "hq", "c": "hq", "b": "hq"})
    yield made
    for srv in made:
        srv.stop()


def ok(proc: Any) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) if proc.stdout.strip().startswith(("{", "[")) else proc.stdout


def public_key(srv: Any) -> str:
    return ok(cli(srv.home, "keys", "show", "--json"))["own"]["public_key"]


def export(srv: Any, tmp_path: Path, name: str, *args: str) -> Path:
    out = tmp_path / f"{name}.bundle"
    ok(cli(srv.home, "bundle", "export", "base", "-o", str(out), *args))
    return out


def import_base(srv: Any, tmp_path: Path, **form: Any) -> None:
    image = make_raw(tmp_path / f"base-{srv.port}.raw", fill={0: b"\x11" * 4096})
    body = {"name": "base", "format": "raw", "temp": ["64M"], "data": ["64M"], **form}
    srv.client().upload("/templates/import", image, body)


def audit_actions(srv: Any) -> Counter[str]:
    return Counter(e["action"] for e in srv.client().get("/audit"))


def layer_files(srv: Any) -> set[str]:
    return {p.name for p in (srv.home / "store" / "layers").iterdir()}


def test_a_template_is_bound_to_its_first_signer_and_check_writes_nothing(servers, tmp_path):
    a, c, b = servers
    import_base(a, tmp_path)
    from_a = export(a, tmp_path, "a-v1")
    # project C started from A's base, then patched it under its own key
    ok(cli(c.home, "keys", "trust", "proj-a", public_key(a)))
    ok(cli(c.home, "bundle", "import", str(from_a)))
    c.client().post("/templates/base/maintenance/enter")
    c.client().post("/templates/base/maintenance/exit", {"recreate": "none"})
    from_c = export(c, tmp_path, "c-v2", "--since", "v1")

    ok(cli(b.home, "keys", "trust", "proj-a", public_key(a)))
    ok(cli(b.home, "keys", "trust", "proj-c", public_key(c)))
    first = ok(cli(b.home, "bundle", "import", str(from_a), "--json"))
    assert (first["versions_added"], first["bound_to"], first["bound_now"]) == (
        [1],
        "proj-a",
        True,
    )
    b.client().post("/clones", {"template": "base", "name": "desk1", "wait": True})

    # C's bundle is signed by a trusted key, but of another project: refused, nothing written
    before_layers, before_audit = layer_files(b), audit_actions(b)
    refused = cli(b.home, "bundle", "import", str(from_c))
    assert refused.returncode == 1
    assert "bound to key proj-a" in refused.stderr, refused.stderr
    assert "goldfleet bundle rebind base proj-c" in refused.stderr
    assert [v["number"] for v in b.client().get("/templates/base/versions")] == [1]

    # --check says the same, exits 1 and writes nothing
    checked = cli(b.home, "bundle", "import", str(from_c), "--check", "--json")
    assert checked.returncode == 1, checked.stderr
    report = json.loads(checked.stdout)
    assert report["file_ok"] is False and "bound to key proj-a" in report["refusal"]
    plain = cli(b.home, "bundle", "import", str(from_c), "--check")
    assert plain.returncode == 1 and "bound to key proj-a" in plain.stderr

    # an admin rebinds the template (audited); then --check says what the import would do
    rebound = ok(cli(b.home, "bundle", "rebind", "base", "proj-c", "--json"))
    assert rebound["key"] == "proj-c" and rebound["previous"] is not None
    checked = cli(b.home, "bundle", "import", str(from_c), "--check", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = json.loads(checked.stdout)
    assert report["file_ok"] is True and report["refusal"] is None
    assert (report["signer"], report["bound_to"], report["bound_now"]) == (
        "proj-c",
        "proj-c",
        False,
    )
    assert (report["versions_added"], report["current_before"], report["current_after"]) == (
        [2],
        1,
        2,
    )
    assert report["layers_checked"] == 1 and report["policies"] == []
    assert (report["clones"], report["clones_behind"]) == (1, ["desk1"])
    text = cli(b.home, "bundle", "import", str(from_c), "--check")
    assert text.returncode == 0 and "the import would succeed" in text.stdout
    # nothing was written by the checks: no version, no layer file, no audit entry but the rebind
    assert [v["number"] for v in b.client().get("/templates/base/versions")] == [1]
    assert layer_files(b) == before_layers
    assert audit_actions(b) - before_audit == Counter({"bundle.rebind": 1})

    done = ok(cli(b.home, "bundle", "import", str(from_c), "--json"))
    assert done["versions_added"] == [2] and done["bound_to"] == "proj-c"
    # and now A's next bundle is the foreign one
    assert "bound to key proj-c" in cli(b.home, "bundle", "import", str(from_a)).stderr

    # a tampered layer: --check reads every layer and finds it, exit 1
    with tarfile.open(from_c) as tar:
        [member] = [m for m in tar.getmembers() if m.name.startswith("layers/")]
    data = bytearray(from_c.read_bytes())
    data[member.offset_data + member.size // 2] ^= 0xFF
    tampered = tmp_path / "tampered.bundle"
    tampered.write_bytes(bytes(data))
    ok(cli(b.home, "bundle", "rebind", "base", "proj-c"))
    bad = cli(b.home, "bundle", "import", str(tampered), "--check", "--json")
    assert bad.returncode == 1 and "does not match its digest" in json.loads(bad.stdout)["refusal"]

    # unknown key names and templates are refused with what to do
    assert "no trusted key is named" in cli(b.home, "bundle", "rebind", "base", "nobody").stderr
    assert cli(b.home, "bundle", "rebind", "nope", "proj-a").returncode == 1


def test_policy_only_bundles_report_or_refuse_what_they_change(servers, tmp_path):
    a, _c, b = servers
    import_base(a, tmp_path)
    ok(cli(b.home, "keys", "trust", "proj-a", public_key(a)))
    ok(cli(b.home, "bundle", "import", str(export(a, tmp_path, "v1"))))
    b.client().post("/clones", {"template": "base", "name": "desk1", "wait": True})

    # project A makes its base's new clones full copies: a policy for new clones only
    a.client().delete("/templates/base")
    import_base(a, tmp_path, kind="full")
    kind_only = export(a, tmp_path, "kind", "--policy-only")
    checked = ok(cli(b.home, "bundle", "import", str(kind_only), "--check", "--json"))
    [change] = checked["policies"]
    assert (change["name"], change["before"], change["after"], change["applies"]) == (
        "kind",
        "linked",
        "full",
        "new clones",
    )
    assert "the 1 existing clones keep their kind" in change["note"]
    done = ok(cli(b.home, "bundle", "import", str(kind_only), "--json"))
    assert [p["applies"] for p in done["policies"]] == ["new clones"]
    assert b.client().get("/clones/desk1")["kind"] == "linked"  # the existing clone keeps it
    shown = cli(b.home, "bundle", "import", str(kind_only))
    assert shown.returncode == 0 and "new clones only" not in shown.stdout  # nothing changes now
    audit = [e for e in b.client().get("/audit") if e["action"] == "bundle.import"]
    assert any("kind: linked -> full" in json.dumps(e) for e in audit)

    # an outline change needs the image: a policy-only bundle is refused with the reason
    a.client().delete("/templates/base")
    import_base(a, tmp_path, kind="full", data=["128M"])
    outline = export(a, tmp_path, "outline", "--policy-only")
    refused = cli(b.home, "bundle", "import", str(outline))
    assert refused.returncode == 1
    assert "a policy-only bundle may not change the outline of template base" in refused.stderr
    assert "1 clones" in refused.stderr and "data volumes" in refused.stderr
    checked = cli(b.home, "bundle", "import", str(outline), "--check", "--json")
    assert checked.returncode == 1 and "policy-only" in json.loads(checked.stdout)["refusal"]
    assert b.client().get("/templates/base")["data"] == [64 * MiB]


def test_a_bundle_file_that_is_not_one_fails_the_check(servers, tmp_path):
    _a, _c, b = servers
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(os.urandom(10_000))
    proc = cli(b.home, "bundle", "import", str(junk), "--check")
    assert proc.returncode == 1 and "bundle refused" in proc.stderr
    assert b.client().get("/templates") == []
