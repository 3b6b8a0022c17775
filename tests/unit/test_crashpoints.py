"""The crash points are a closed list: the source marks each listed point exactly once, and
marks no other. The crash-injection suite kills a server at every listed point
(tests/e2e/test_e2e_crash_injection.py), so a boundary marked in the source is a boundary tested."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import goldfleet
from goldfleet import crashpoints

SRC = Path(goldfleet.__file__).parent


def _marked() -> Counter[str]:
    found: Counter[str] = Counter()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "reached"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "crashpoints"
            ):
                (arg,) = node.args
                assert isinstance(arg, ast.Constant), f"{path}: a crash point is named literally"
                found[arg.value] += 1
    return found


def test_every_listed_point_is_marked_once_and_no_other() -> None:
    marked = _marked()
    assert set(marked) == set(crashpoints.POINTS)
    assert [name for name, n in marked.items() if n != 1] == []


def test_an_unlisted_point_is_refused() -> None:
    with pytest.raises(ValueError, match="not listed"):
        crashpoints.reached("no-such.point")


def test_a_point_kills_only_when_asked_and_then_as_kill_9() -> None:
    crashpoints.reached("pool-create.committed")  # not asked: nothing happens
    code = "from goldfleet import crashpoints; crashpoints.reached('pool-create.committed')"
    env = {**os.environ, crashpoints.ENV: "pool-create.committed"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, check=False)
    assert proc.returncode == -9
    env[crashpoints.ENV] = "bundle-import.sealed"
    proc = subprocess.run([sys.executable, "-c", code], env=env, check=False)
    assert proc.returncode == 0
