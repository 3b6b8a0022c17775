"""Templates through the real API: import, list, show, versions, names, deletion, from-clone."""

from __future__ import annotations

import stat

MiB = 1 << 20


def _store_files(fleet) -> list[str]:
    return sorted(str(p.relative_to(fleet.store)) for p in fleet.store.rglob("*") if p.is_file())


def test_import_then_list_show_and_versions(fleet, template):
    (listed,) = fleet.client.get("/templates")
    shown = fleet.client.get("/templates/base")
    for t in (listed, shown):
        assert t["name"] == "base"
        assert t["status"] == "ready"
        assert t["kind"] == "linked"
        assert t["current_version"] == 1
        assert t["versions"] == 1
        assert t["temp"] == [64 * MiB]
        assert t["data"] == [64 * MiB]
        assert t["system_size"] == 16 * MiB
        assert t["clones"] == 0
        assert t["overlay_path"] is None
    (v1,) = fleet.versions()
    assert v1["name"] == "v1" and v1["number"] == 1 and v1["current"] is True
    assert v1["chain"] == [v1["top_layer"]]
    layer = fleet.layer_file(v1["top_layer"])
    assert stat.S_IMODE(layer.stat().st_mode) == 0o444
    # the layer holds the imported bytes, read through qemu
    assert fleet.shows(layer, 0, 0x11)
    assert fleet.shows(layer, MiB, 0x11)
    assert fleet.shows(layer, 2 * MiB, 0x00)
    assert fleet.image_info(layer).get("backing-filename") is None
    # no upload or work file is left behind
    assert list((fleet.store / "incoming").iterdir()) == []
    assert fleet.work_files() == []


BAD_NAMES = ["../etc", "UPPER", "a/b", "-dash", ".hidden", "a b", "x" * 64, "", "café", "a\nb"]


def test_bad_template_names_are_refused_and_nothing_is_written(fleet):
    before = _store_files(fleet)
    for name in BAD_NAMES:
        message = fleet.error(422, fleet.import_template, name, {0: b"\x11" * 4096})
        assert "template name" in message, (name, message)
        assert fleet.client.get("/templates") == []
        assert _store_files(fleet) == before
        assert list((fleet.store / "incoming").iterdir()) == []


def test_bad_names_in_other_requests_are_refused(fleet, template):
    fleet.create(name="probe")
    for name in BAD_NAMES:
        post = fleet.client.post
        assert fleet.error(422, post, "/clones", {"template": "base", "name": name})
        assert fleet.error(422, post, "/clones", {"template": name, "count": 1})
        assert fleet.error(422, post, "/templates/from-clone", {"name": name, "clone": "x"})
        assert fleet.error(422, post, "/tokens", {"name": name, "role": "reader"})
        assert fleet.error(422, post, "/clones/recreate", {"template": name})
        assert fleet.error(422, post, "/clones/probe/rebase", {"to": name or "?"})
    assert [c["name"] for c in fleet.client.get("/clones")] == ["probe"]
    assert fleet.show("probe")["status"] == "ready"
    assert [t["name"] for t in fleet.client.get("/templates")] == ["base"]


def test_unknown_template_is_404_naming_it(fleet, template):
    message = fleet.error(404, fleet.client.get, "/templates/nosuch")
    assert "nosuch" in message
    message = fleet.error(404, fleet.client.post, "/clones", {"template": "nosuch", "count": 1})
    assert "nosuch" in message


def test_duplicate_template_name_is_409_and_nothing_changes(fleet, template):
    before = _store_files(fleet)
    versions = fleet.versions()
    message = fleet.error(409, fleet.import_template, "base", {0: b"\x99" * 4096})
    assert "base" in message
    assert _store_files(fleet) == before
    assert fleet.versions() == versions
    (layer,) = fleet.layers_dir.glob("sha256-*.qcow2")
    assert fleet.shows(layer, 0, 0x11)


def test_delete_is_refused_while_clones_exist(fleet, template):
    fleet.create(name="keeper")
    (v1,) = fleet.versions()
    message = fleet.error(409, fleet.client.delete, "/templates/base")
    assert "keeper" in message
    assert fleet.client.get("/templates/base")["status"] == "ready"
    assert fleet.layer_file(v1["top_layer"]).exists()

    fleet.client.delete("/clones/keeper")
    assert fleet.client.delete("/templates/base") is None
    assert fleet.client.get("/templates") == []
    assert not fleet.layer_file(v1["top_layer"]).exists()
    assert fleet.error(404, fleet.client.get, "/templates/base")


def _derive(fleet) -> tuple[dict, dict]:
    """Template ``derived`` made from clone ``src`` of base, which wrote 0x5a at 4 MiB."""
    fleet.create(name="src")
    system = fleet.volumes("src")["system"]
    fleet.pattern(system, 4 * MiB, 0x5A)
    made = fleet.client.post("/templates/from-clone", {"name": "derived", "clone": "src"})
    (source_v1,) = fleet.versions("base")
    return made, source_v1


def test_create_from_clone_shares_the_source_layers(fleet, template):
    made, source_v1 = _derive(fleet)
    assert made["name"] == "derived" and made["current_version"] == 1
    assert made["temp"] == [64 * MiB] and made["data"] == [64 * MiB]
    (derived_v1,) = fleet.versions("derived")
    assert derived_v1["chain"][1:] == source_v1["chain"]
    top = fleet.layer_file(derived_v1["top_layer"])
    assert derived_v1["top_layer"] not in source_v1["chain"]
    assert stat.S_IMODE(top.stat().st_mode) == 0o444
    # the new layer is an overlay on the source's top layer, by file name (nothing copied)
    info = fleet.image_info(top)
    assert info["backing-filename"] == fleet.layer_file(source_v1["top_layer"]).name
    assert top.stat().st_size < 4 * MiB

    (child,) = fleet.create(template="derived", count=1)
    system = fleet.volumes(child)["system"]
    assert fleet.shows(system, 4 * MiB, 0x5A)  # what the source clone wrote
    assert fleet.shows(system, MiB, 0x11)  # what the source template holds
    assert fleet.show(child)["template"] == "derived"
    # the source clone still works and is unchanged
    assert fleet.show("src")["status"] == "ready"
    assert fleet.shows(fleet.volumes("src")["system"], 4 * MiB, 0x5A)

    fleet.client.delete("/clones/src")
    message = fleet.error(409, fleet.client.delete, "/templates/base")
    assert "derived" in message
    assert fleet.client.get("/templates/base")["current_version"] == 1


def test_create_from_clone_refuses_a_taken_name_or_unknown_clone(fleet, template):
    fleet.create(name="src")
    assert "base" in fleet.error(
        409, fleet.client.post, "/templates/from-clone", {"name": "base", "clone": "src"}
    )
    assert "ghost" in fleet.error(
        404, fleet.client.post, "/templates/from-clone", {"name": "new", "clone": "ghost"}
    )
    assert [t["name"] for t in fleet.client.get("/templates")] == ["base"]
    assert len(list(fleet.layers_dir.glob("sha256-*.qcow2"))) == 1
    assert fleet.work_files() == []


def test_a_derived_template_can_be_deleted_and_its_source_afterwards(fleet, template):
    _, source_v1 = _derive(fleet)
    (derived_v1,) = fleet.versions("derived")
    fleet.client.delete("/clones/src")
    fleet.client.delete("/templates/derived")  # nothing depends on derived
    assert not fleet.layer_file(derived_v1["top_layer"]).exists()
    assert fleet.layer_file(source_v1["top_layer"]).exists()
    (clone,) = fleet.create(count=1)
    assert fleet.shows(fleet.volumes(clone)["system"], MiB, 0x11)
    fleet.client.delete(f"/clones/{clone}")
    fleet.client.delete("/templates/base")
    assert fleet.client.get("/templates") == []


def test_flatten_makes_a_single_layer_version_and_old_clones_keep_working(fleet, template):
    fleet.create(name="old")
    fleet.update(byte=0x22)
    flat = fleet.client.post("/templates/base/flatten")
    assert flat["number"] == 3 and flat["current"] is True
    assert flat["chain"] == [flat["top_layer"]]
    layer = fleet.layer_file(flat["top_layer"])
    assert fleet.image_info(layer).get("backing-filename") is None
    assert fleet.shows(layer, MiB, 0x22) and fleet.shows(layer, 0, 0x11)
    assert fleet.shows(fleet.volumes("old")["system"], MiB, 0x11)
    (new,) = fleet.create(count=1)
    assert fleet.show(new)["version"] == 3
    assert fleet.shows(fleet.volumes(new)["system"], MiB, 0x22)


def test_create_from_a_full_clone_makes_a_standalone_base(fleet, template):
    fleet.create(name="solo", full=True)
    fleet.pattern(fleet.volumes("solo")["system"], 4 * MiB, 0x5B)
    made = fleet.client.post("/templates/from-clone", {"name": "fat", "clone": "solo"})
    assert made["kind"] == "full"
    (v1,) = fleet.versions("fat")
    assert v1["chain"] == [v1["top_layer"]]
    assert fleet.image_info(fleet.layer_file(v1["top_layer"])).get("backing-filename") is None
    (child,) = fleet.create(template="fat", count=1)
    assert fleet.show(child)["kind"] == "full"
    system = fleet.volumes(child)["system"]
    assert fleet.shows(system, 4 * MiB, 0x5B) and fleet.shows(system, MiB, 0x11)


def test_import_with_kind_full_makes_full_clones_by_default(fleet):
    made = fleet.import_template("fat", {MiB: b"\x11" * 4096}, kind="full", temp=[], data=["8M"])
    assert (made["kind"], made["temp"], made["data"]) == ("full", [], [8 * MiB])
    (name,) = fleet.create(template="fat", count=1)
    c = fleet.show(name)
    assert c["kind"] == "full"
    assert [(v["role"], v["size"]) for v in c["volumes"]] == [
        ("system", 16 * MiB),
        ("data", 8 * MiB),
    ]
    assert "backing-filename" not in fleet.image_info(fleet.volumes(name)["system"])
    assert "kind" in fleet.error(422, fleet.import_template, "odd", {0: b"\x01"}, kind="thin")
    assert [t["name"] for t in fleet.client.get("/templates")] == ["fat"]
