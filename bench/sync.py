"""Benchmark: HQ to site delta sync over real HTTP on loopback (issue 4).

Two real server processes (HQ and a site, two homes, two ports). The template has a 2 GiB
virtual system disk holding 512 MiB of data written with qemu-io in 32 MiB chunks of random
bytes; v2 changes 32 MiB of it.

- ``full_mb_s``: the site's first sync (a fresh full transfer of v1, checks and sealing
  included), MB (10^6 bytes) of layer per second of the whole sync call; ``curl_mb_s``: a plain
  ``curl -o`` of the same layer URL with the site token, in the same run. Beyond curl's work the
  sync hashes every byte, runs ``qemu-img info``/``check``, fsyncs the layer before sealing it
  (curl leaves its file in the page cache) and talks to both servers' databases; see "Where the
  time goes" in docs/sites.md.
- ``delta_wire_bytes``: every byte (both directions, headers and catalog included) through a
  counting TCP proxy between the site and HQ while the site holding v1 syncs v2.
- ``identical_layer_bytes``: layer bytes a sync downloads for an identical version (the same
  image imported at HQ as a second template, assigned to the site).

Targets: delta_ratio = delta_wire_bytes / (changed_bytes + 262144) <= 1.02; identical_layer_bytes
== 0; throughput_ratio = full_mb_s / curl_mb_s >= 0.7. Exits 0 whether or not a target is met;
the last line printed is one JSON object with the figures.

    .venv/bin/python bench/sync.py
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from goldfleet.cli.client import Client, ClientError
from goldfleet.home import init_home

MiB = 1 << 20
GiB = 1 << 30
VIRTUAL = 2 * GiB
DATA = 512 * MiB
CHANGED = 32 * MiB
CHUNK = 32 * MiB


class BenchError(Exception):
    """The run itself failed (not a missed target)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, port: int, role: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GOLDFLEET_HOME": str(home), "GOLDFLEET_ROLE": role}
    for key in ("GOLDFLEET_URL", "GOLDFLEET_TOKEN"):
        env.pop(key, None)
    log = home.parent / f"{role}.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "goldfleet", "serve", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    probe = Client(f"http://127.0.0.1:{port}", None, timeout=5)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{role} server exited: {log.read_text()[-2000:]}")
        try:
            probe.get("/health")
            return proc
        except ClientError:
            time.sleep(0.05)
    raise BenchError(f"{role} server did not answer /health in 60 s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)


class CountingProxy:
    """A TCP proxy on loopback that counts every byte it carries, both ways."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.count = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                a, _ = self.listener.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()
            threading.Thread(target=self._pipe, args=(b, a), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 18):
                with self.lock:
                    self.count += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def take(self) -> int:
        with self.lock:
            n, self.count = self.count, 0
        return n


def qemu_io_write(image: Path, offset: int, length: int, scratch: Path) -> None:
    """Write ``length`` random bytes at ``offset`` through qemu-io, in 32 MiB chunks."""
    for at in range(offset, offset + length, CHUNK):
        scratch.write_bytes(os.urandom(CHUNK))
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", f"write -s {scratch} {at} {CHUNK}", str(image)],
            check=True,
            capture_output=True,
        )
    scratch.unlink()


def layer_file(home: Path, digest: str) -> Path:
    return home / "store" / "layers" / f"sha256-{digest.removeprefix('sha256:')}.qcow2"


def run(work: Path) -> dict[str, float | int]:
    hq_home, site_home = work / "hq", work / "site"
    hq_port, site_port = free_port(), free_port()
    init_home(hq_home, port=hq_port)
    init_home(site_home, port=site_port)
    procs = [start_server(hq_home, hq_port, "hq"), start_server(site_home, site_port, "site")]
    proxy = CountingProxy(hq_port)
    try:
        hq = Client(f"http://127.0.0.1:{hq_port}", (hq_home / "admin.token").read_text().strip())
        site = Client(
            f"http://127.0.0.1:{site_port}", (site_home / "admin.token").read_text().strip()
        )
        image = work / "system.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(image), str(VIRTUAL)], check=True
        )
        qemu_io_write(image, 0, DATA, work / "chunk")
        params = {"format": "qcow2", "temp": [], "data": []}
        hq.upload("/templates/import", image, {"name": "bench", **params})
        token = hq.post("/sites", {"name": "bench-site"})["token"]
        hq.post("/sites/bench-site/templates", {"template": "bench"})
        v1 = hq.get("/templates/bench/versions")[0]
        v1_file = layer_file(hq_home, v1["top_layer"])
        v1_size = v1_file.stat().st_size

        # a fresh full transfer, then curl of the same layer URL in the same run
        site.post("/site/join", {"url": f"http://127.0.0.1:{hq_port}", "token": token})
        t0 = time.perf_counter()
        full = site.post("/site/sync", {})
        full_s = time.perf_counter() - t0
        if full["bytes_downloaded"] != v1_size or full["failed"]:
            raise BenchError(f"the full sync did not transfer v1 exactly once: {full}")
        out = work / "curl.out"
        t0 = time.perf_counter()
        subprocess.run(
            [
                "curl",
                "-sSf",
                "-o",
                str(out),
                "-H",
                f"Authorization: Bearer {token}",
                f"http://127.0.0.1:{hq_port}/sync/layers/{v1['top_layer']}",
            ],
            check=True,
        )
        curl_s = time.perf_counter() - t0
        if out.stat().st_size != v1_size:
            raise BenchError("curl did not receive the whole layer")
        out.unlink()

        # v2 changes 32 MiB; the site holding v1 syncs it through the counting proxy
        t = hq.post("/templates/bench/maintenance/enter")
        qemu_io_write(Path(t["overlay_path"]), 64 * MiB, CHANGED, work / "chunk")
        hq.post("/templates/bench/maintenance/exit", {"recreate": "none"})
        site.post("/site/join", {"url": proxy.url, "token": token})
        proxy.take()
        delta = site.post("/site/sync", {})
        delta_wire = proxy.take()
        if delta["versions_added"] != {"bench": [2]}:
            raise BenchError(f"the delta sync did not add v2: {delta}")

        # an identical version: the same image imported again at HQ as another template
        hq.upload("/templates/import", image, {"name": "bench-again", **params})
        again = hq.get("/templates/bench-again/versions")[0]
        if again["top_layer"] != v1["top_layer"]:
            raise BenchError("importing the same image again made a different layer")
        hq.post("/sites/bench-site/templates", {"template": "bench-again"})
        same = site.post("/site/sync", {})
        if same["versions_added"].get("bench-again") != [1]:
            raise BenchError(f"the identical version was not added: {same}")

        full_mb_s = v1_size / full_s / 1e6
        curl_mb_s = v1_size / curl_s / 1e6
        return {
            "v1_layer_bytes": v1_size,
            "delta_wire_bytes": delta_wire,
            "delta_layer_bytes": delta["bytes_downloaded"],
            "changed_bytes": CHANGED,
            "delta_ratio": round(delta_wire / (CHANGED + 262144), 4),
            "identical_layer_bytes": same["bytes_downloaded"],
            "full_mb_s": round(full_mb_s, 1),
            "curl_mb_s": round(curl_mb_s, 1),
            "throughput_ratio": round(full_mb_s / curl_mb_s, 3),
        }
    finally:
        proxy.listener.close()
        for proc in procs:
            stop_server(proc)


def main() -> int:
    if shutil.which("curl") is None or shutil.which("qemu-io") is None:
        print("bench/sync.py needs curl and qemu-io: make system-packages", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="goldfleet-bench-sync-"))
    try:
        figures = run(work)
    except (BenchError, ClientError, subprocess.CalledProcessError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"delta: {figures['delta_wire_bytes']} bytes on the wire for {CHANGED} changed"
        f" (ratio {figures['delta_ratio']}, target <= 1.02)"
    )
    print(f"identical version: {figures['identical_layer_bytes']} layer bytes (target 0)")
    print(
        f"full transfer: {figures['full_mb_s']} MB/s, curl {figures['curl_mb_s']} MB/s"
        f" (ratio {figures['throughput_ratio']}, target >= 0.7)"
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
