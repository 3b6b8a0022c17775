"""HQ serving layer files to site tokens, on a real ``goldfleet serve`` (zero-copy there, see
api/files.py): whole files and Range requests byte for byte, on keep-alive connections; only
the layers of the templates assigned to the token's site, and only to a site token; a client
that goes away in the middle of a layer is no error at HQ."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sitekit import MiB, layer_path, running

from goldfleet.cli.client import Client

pytestmark = pytest.mark.slow


def _import(hq: Any, name: str, path: Path, data: bytes) -> str:
    """Template ``name`` whose one layer holds ``data``; its digest."""
    with path.open("wb") as f:
        f.truncate(64 * MiB)
        f.write(data)
    hq.client().upload(
        "/templates/import", path, {"name": name, "format": "raw", "temp": [], "data": []}
    )
    return hq.client().get(f"/templates/{name}/versions")[0]["top_layer"]


@pytest.fixture
def hq(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("GOLDFLEET_HOME", str(tmp_path / "unused"))
    with running(tmp_path, {"hq": "hq"}) as (srv,):
        yield srv


def test_layers_are_served_whole_and_in_ranges_to_their_sites_only(hq, tmp_path):
    base = _import(hq, "base", tmp_path / "base.raw", os.urandom(40 * MiB))
    other = _import(hq, "other", tmp_path / "other.raw", os.urandom(MiB))
    token = hq.client().post("/sites", {"name": "branch"})["token"]
    hq.client().post("/sites/branch/templates", {"template": "base"})
    held = layer_path(hq, base).read_bytes()
    size = len(held)
    url = f"/sync/layers/{base}"

    with httpx.Client(base_url=hq.url, headers={"Authorization": f"Bearer {token}"}) as site:
        for _ in range(2):  # one keep-alive connection throughout
            whole = site.get(url)
            assert whole.status_code == 200 and whole.headers["content-length"] == str(size)
            assert hashlib.sha256(whole.content).digest() == hashlib.sha256(held).digest()
            for start, end in ((size // 3, None), (0, 99), (size - 1, None), (12345, size * 2)):
                rng = f"bytes={start}-" + ("" if end is None else str(end))
                part = site.get(url, headers={"Range": rng})
                last = min(size, (end or size) + 1) - 1
                assert part.status_code == 206, rng
                assert part.headers["content-range"] == f"bytes {start}-{last}/{size}"
                assert part.content == held[start : last + 1], rng
            refused = site.get(url, headers={"Range": f"bytes={size}-"})
            assert refused.status_code == 416
            assert refused.headers["content-range"] == f"bytes */{size}"

        # another template's layer, a digest HQ does not hold: 404; nothing else to a site token
        for digest in (other, "sha256:" + "0" * 64):
            assert site.get(f"/sync/layers/{digest}").status_code == 404
        assert site.get("/templates").status_code == 403
    assert httpx.get(f"{hq.url}{url}").status_code == 401
    assert httpx.get(f"{hq.url}{url}", headers={"Range": "bytes=0-"}).status_code == 401
    admin = httpx.get(f"{hq.url}{url}", headers={"Authorization": f"Bearer {hq.token}"})
    assert admin.status_code == 403  # the sync endpoints are for site tokens

    # unassigned: its layers are refused from then on, resumes included
    hq.client().delete("/sites/branch/templates/base")
    for rng in (None, "bytes=100-"):
        r = httpx.get(
            f"{hq.url}{url}",
            headers={"Authorization": f"Bearer {token}", **({"Range": rng} if rng else {})},
        )
        assert r.status_code == 404


def test_a_site_gone_in_the_middle_of_a_layer_is_no_error_at_hq(hq, tmp_path):
    base = _import(hq, "base", tmp_path / "base.raw", os.urandom(48 * MiB))
    token = hq.client().post("/sites", {"name": "branch"})["token"]
    hq.client().post("/sites/branch/templates", {"template": "base"})
    request = (
        f"GET /sync/layers/{base} HTTP/1.1\r\nHost: hq\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()
    for _ in range(3):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", hq.port))
            s.sendall(request)
            got = s.recv(4096)
            assert got.startswith(b"HTTP/1.1 200 "), got[:200]
            while len(got) < 2 * MiB:  # the body is on its way
                got += s.recv(65536)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # HQ serves on, the whole layer to the next request
    held = layer_path(hq, base).read_bytes()
    assert Client(hq.url, token).get("/sync/catalog")["templates"][0]["template"] == "base"
    r = httpx.get(f"{hq.url}/sync/layers/{base}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.content == held
    log = (hq.home.parent / f"server-{hq.port}.log").read_text()
    assert "Traceback" not in log and "ERROR" not in log and "Exception" not in log, log[-3000:]
