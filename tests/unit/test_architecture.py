"""The architecture as docs/architecture.md draws it: what import-linter does not check.

`lint-imports` (in `make test`) holds the layers, the private modules and the absence of
cycles; here: no module uses another module's private names, and the document names only
packages that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import goldfleet

SRC = Path(goldfleet.__file__).parent
DOC = SRC.parents[1] / "docs" / "architecture.md"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _private_uses(path: Path, me: str | None = None) -> list[str]:
    """``from goldfleet.x import _name`` and ``module._name`` for an imported goldfleet module,
    where ``_name`` is not the importer's own. ``me``: the module's name, when the file is not
    under the source tree (a probe)."""
    tree = ast.parse(path.read_text(), str(path))
    me = me or _module_name(path)
    found: list[str] = []
    modules: dict[str, str] = {}  # local name → goldfleet module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("goldfleet"):
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                # importing a private *module* from inside its own package is allowed
                own_package = me.startswith(node.module + ".") or me == node.module
                if alias.name.startswith("_") and not own_package:
                    found.append(f"{me}: from {node.module} import {alias.name}")
                modules[alias.asname or alias.name] = target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("goldfleet"):
                    modules[alias.asname or alias.name.split(".")[0]] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{me}: {node.value.id}.{node.attr} ({modules[node.value.id]})")
    return found


def test_no_module_uses_a_private_name_of_another() -> None:
    found = [use for path in sorted(SRC.rglob("*.py")) for use in _private_uses(path)]
    assert found == []


def test_the_check_finds_a_private_use(tmp_path: Path) -> None:
    """The check above can fail: a module reaching into another's private name is found."""
    # the probes are checked as if they were modules of the package, without being put there:
    # the suite runs on several workers, and the test above reads every file of the tree
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from goldfleet.services.fleet._clones import _mark\n"
        "from goldfleet.services.distribution import _bundles\n"
        "x = _bundles._tar_info\n"
    )
    found = _private_uses(bad, "goldfleet.services.pools._probe_private_use")
    assert any("import _mark" in f for f in found)
    assert any("_bundles._tar_info" in f for f in found)
    assert any("import _bundles" in f for f in found)  # another package's private module
    own = tmp_path / "own.py"
    own.write_text("from goldfleet.services.distribution import _bundles\nx = _bundles.FORMAT\n")
    # a private module of one's own package is fine
    assert _private_uses(own, "goldfleet.services.distribution._probe_private_use") == []


def test_every_package_the_architecture_names_exists() -> None:
    text = DOC.read_text()
    named = set(re.findall(r"\*\*([a-z_]+)(?:/|\.py)\*\*", text))
    named |= {f"services/{n}" for n in re.findall(r"\*\*services/([a-z_]+)/\*\*", text)}
    assert {"domain", "store", "drivers", "context", "bootstrap", "home", "api", "cli"} <= named
    for name in named:
        assert (SRC / name).is_dir() or (SRC / f"{name}.py").is_file(), name
    services = {p.name for p in (SRC / "services").iterdir() if (p / "__init__.py").is_file()}
    documented = set(re.findall(r"\*\*services/([a-z_]+)/\*\*", text))
    assert services == documented, "every service package has its paragraph, and only those"


def test_every_service_package_declares_its_public_surface() -> None:
    for pkg in (SRC / "services").iterdir():
        init = pkg / "__init__.py"
        if not init.is_file():
            continue
        tree = ast.parse(init.read_text())
        exported = [
            n
            for n in tree.body
            if isinstance(n, ast.Assign)
            and any(getattr(t, "id", "") == "__all__" for t in n.targets)
        ]
        assert exported, f"services/{pkg.name}/__init__.py has no __all__"
