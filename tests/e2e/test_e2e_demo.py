"""`goldfleet demo`, the README's first command, runs its checks and passes (two real servers)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_the_demo_passes(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOLDFLEET_")}
    r = subprocess.run(
        [sys.executable, "-m", "goldfleet", "demo", "--linked", "4", "--full", "1"],
        env={**env, "TMPDIR": str(tmp_path), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "all checks passed" in r.stdout
    assert "site branch pulled v2 as its new layer only" in r.stdout
    assert "FAIL" not in r.stdout
    assert os.listdir(tmp_path) == []  # the demo's home is removed
