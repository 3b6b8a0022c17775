"""Benchmark: HQ serving one new layer to many sites at once (issue 10).

A real HQ server process runs on a temporary home. Template ``bench`` gets v1 (a 2 GiB virtual
disk holding a little data), then v2 through maintenance mode, whose new (top) layer holds
``--layer-mib`` MiB of random bytes written with qemu-io. Eight sites are created at HQ and the
template is assigned to each, so every download below goes through the real route: the site
token's authentication, the authorisation of the layer for that site, and Range handling.

Then, in the same run and ``--repeats`` times over:

- ``alone_mb_s``: one ``curl`` with one site's token downloads the new layer alone;
- ``aggregate_mb_s``: eight ``curl`` processes, each with its own site's token, download the same
  layer at once (curl stands in for eight sites: a site's sync adds hashing and fsync on the
  site's side, not on HQ's, and this measures HQ's side).

MB is 10^6 bytes. ``serve_ratio`` = aggregate / alone, from the medians of the rounds; target
(issue 10) >= 0.8. Downloads go to /dev/null so the figures are HQ's: every download is checked
for status 200 and the layer's full size; one Range request (resume from the middle) is checked
for 206, its Content-Range and the bytes' sha256. ``hq_cpu_s_per_gb`` is HQ's own CPU time per
GB served (user + system, all its threads), the cost that limits a busy HQ.

``measure_serve(url, tokens, digest, size)`` measures against any running HQ (for bench/scale.py);
``run`` builds the HQ above first. The run exits 0 whether or not the target is met; it exits
non-zero only when the run itself fails. The last line printed is one line of JSON.

    .venv/bin/python bench/serve.py [--layer-mib 384] [--repeats 3] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from goldfleet.cli.client import Client, ClientError
from goldfleet.home import init_home

MiB = 1 << 20
GiB = 1 << 30
VIRTUAL = 2 * GiB
CHUNK = 32 * MiB  # bytes per qemu-io write
SITES = 8
RATIO_TARGET = 0.8
CURL_TIMEOUT = 300  # seconds for one download; the run fails rather than hang
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROBE_EVERY = 0.02  # seconds between two /health requests during a round


class BenchError(Exception):
    """The run itself failed (not a missed target)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GOLDFLEET_HOME": str(home), "GOLDFLEET_ROLE": "hq"}
    for key in ("GOLDFLEET_URL", "GOLDFLEET_TOKEN"):
        env.pop(key, None)
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
            raise BenchError(f"HQ exited: {log.read_text()[-2000:]}")
        try:
            probe.get("/health")
            return proc
        except ClientError:
            time.sleep(0.05)
    proc.kill()
    proc.wait(15)
    raise BenchError(f"HQ did not answer /health in 60 s: {log.read_text()[-2000:]}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads, not its children)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def qemu_io_write(image: Path, offset: int, length: int, scratch: Path) -> None:
    """Write ``length`` random bytes at ``offset`` through qemu-io, CHUNK at a time."""
    for at in range(offset, offset + length, CHUNK):
        n = min(CHUNK, offset + length - at)
        scratch.write_bytes(os.urandom(n))
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", f"write -s {scratch} {at} {n}", str(image)],
            check=True,
            capture_output=True,
        )
    scratch.unlink()


def _curl(url: str, token: str, *extra: str) -> subprocess.Popen[bytes]:
    """One download to /dev/null; stdout is ``status size seconds``."""
    return subprocess.Popen(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "--max-time",
            str(CURL_TIMEOUT),
            "-H",
            f"Authorization: Bearer {token}",
            "-w",
            "%{http_code} %{size_download} %{time_total}",
            *extra,
            url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _downloads(url: str, tokens: list[str], size: int) -> float:
    """Run one curl per token at once; the seconds from the first start to the last end."""
    t0 = time.perf_counter()
    procs = [_curl(url, token) for token in tokens]
    outs = [p.communicate(timeout=CURL_TIMEOUT + 30) for p in procs]
    seconds = time.perf_counter() - t0
    for p, (out, err) in zip(procs, outs, strict=True):
        status, got, _ = out.decode().split()
        if p.returncode != 0 or status != "200" or int(got) != size:
            raise BenchError(f"a download failed: status {status}, {got} of {size} bytes; {err!r}")
    return seconds


class HealthProbe:
    """``GET /health`` every PROBE_EVERY seconds on one connection, in a thread, while a round
    runs: how long HQ's event loop keeps other requests waiting while it serves layers."""

    def __init__(self, url: str) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.seconds: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            while not self._stop.wait(PROBE_EVERY):
                t0 = time.perf_counter()
                conn.request("GET", "/health")
                conn.getresponse().read()
                self.seconds.append(time.perf_counter() - t0)
        finally:
            conn.close()

    def worst_ms(self) -> float:
        return max(self.seconds, default=0.0) * 1000


def evict(layer: Path) -> None:
    """Drop this one file's pages from the page cache (no other file's), for a cold round."""
    fd = os.open(layer, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def check_range(url: str, token: str, size: int, layer: Path | None) -> None:
    """A resume from the middle: 206, the right Content-Range and (given the file) bytes."""
    start = size // 2
    proc = subprocess.run(
        [
            "curl",
            "-sS",
            "-D",
            "-",
            "--max-time",
            str(CURL_TIMEOUT),
            "-H",
            f"Authorization: Bearer {token}",
            "-H",
            f"Range: bytes={start}-",
            url,
        ],
        capture_output=True,
        check=True,
        timeout=CURL_TIMEOUT + 30,
    )
    head, _, body = proc.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").lower().split("\r\n")
    want = f"content-range: bytes {start}-{size - 1}/{size}"
    if not lines[0].endswith(" 206 partial content") or want not in lines:
        raise BenchError(f"the Range request was not answered as asked: {lines}")
    if len(body) != size - start:
        raise BenchError(f"the Range request got {len(body)} bytes, not {size - start}")
    if layer is not None:
        with layer.open("rb") as f:
            f.seek(start)
            if hashlib.sha256(f.read()).digest() != hashlib.sha256(body).digest():
                raise BenchError("the Range request got other bytes than the layer's")


def measure_serve(
    url: str,
    tokens: list[str],
    digest: str,
    size: int,
    *,
    repeats: int = 3,
    hq_pid: int | None = None,
    layer: Path | None = None,
    cold: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Throughput of HQ serving layer ``digest`` (``size`` bytes) at ``url``: one download
    alone, then one per token at once, ``repeats`` times; MB/s (10^6 bytes) per round, their
    medians and ``serve_ratio``. Each token must be a site token the layer is assigned to.
    Meanwhile ``/health`` is asked every PROBE_EVERY seconds: the slowest answer per round.
    With ``hq_pid``, HQ's CPU seconds per GB served; with ``layer`` (HQ's file), the bytes of a
    Range answer are compared with it, and with ``cold`` each round starts with the layer out
    of the page cache (HQ reads it from disk)."""
    layer_url = f"{url}/sync/layers/{digest}"
    check_range(layer_url, tokens[0], size, layer)
    _downloads(layer_url, tokens[:1], size)  # warm: page cache, connections, imports
    figures: dict[str, dict[str, list[float]]] = {
        phase: {"mb_s": [], "cpu": [], "health_ms": []} for phase in ("alone", "many")
    }
    for round_ in range(1, repeats + 1):
        for phase, who in (("alone", tokens[:1]), ("many", tokens)):
            if cold and layer is not None:
                evict(layer)
            cpu0 = cpu_seconds(hq_pid) if hq_pid else 0.0
            with HealthProbe(url) as probe:
                seconds = _downloads(layer_url, who, size)
            mb_s = len(who) * size / seconds / 1e6
            cpu = (cpu_seconds(hq_pid) - cpu0) / (len(who) * size / 1e9) if hq_pid else 0.0
            got = figures[phase]
            got["mb_s"].append(mb_s)
            got["cpu"].append(cpu)
            got["health_ms"].append(probe.worst_ms())
            say(
                f"round {round_}: {len(who)} download(s) at once: {mb_s:.0f} MB/s"
                f" ({seconds:.2f} s), /health at worst {probe.worst_ms():.0f} ms"
                + (f", HQ {cpu:.2f} CPU s/GB" if hq_pid else "")
            )
    alone_mb_s = statistics.median(figures["alone"]["mb_s"])
    aggregate_mb_s = statistics.median(figures["many"]["mb_s"])
    out: dict[str, Any] = {
        "layer_bytes": size,
        "concurrency": len(tokens),
        "repeats": repeats,
        "cold": cold,
        "alone_mb_s": round(alone_mb_s, 1),
        "aggregate_mb_s": round(aggregate_mb_s, 1),
        "serve_ratio": round(aggregate_mb_s / alone_mb_s, 3),
        "alone_rounds": [round(x, 1) for x in figures["alone"]["mb_s"]],
        "aggregate_rounds": [round(x, 1) for x in figures["many"]["mb_s"]],
        "health_worst_ms_alone": round(max(figures["alone"]["health_ms"]), 1),
        "health_worst_ms_many": round(max(figures["many"]["health_ms"]), 1),
    }
    if hq_pid:
        out["hq_cpu_s_per_gb_alone"] = round(statistics.median(figures["alone"]["cpu"]), 3)
        out["hq_cpu_s_per_gb_many"] = round(statistics.median(figures["many"]["cpu"]), 3)
    return out


def run(
    work: Path,
    layer_mib: int,
    repeats: int,
    concurrency: int,
    cold: bool,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Build HQ (template, v2 with the big new layer, the sites) and measure it."""
    home = work / "hq"
    port = free_port()
    init_home(home, port=port)
    proc = start_server(home, port, work / "hq.log")
    try:
        hq = Client(f"http://127.0.0.1:{port}", (home / "admin.token").read_text().strip())
        image = work / "system.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(image), str(VIRTUAL)], check=True
        )
        qemu_io_write(image, 0, MiB, work / "chunk")
        hq.upload(
            "/templates/import", image, {"name": "bench", "format": "qcow2", "temp": [], "data": []}
        )
        t = hq.post("/templates/bench/maintenance/enter")
        qemu_io_write(Path(t["overlay_path"]), 64 * MiB, layer_mib * MiB, work / "chunk")
        hq.post("/templates/bench/maintenance/exit", {"recreate": "none"})
        v2 = hq.get("/templates/bench/versions")[-1]
        digest = v2["top_layer"]
        layer = home / "store" / "layers" / f"sha256-{digest.removeprefix('sha256:')}.qcow2"
        size = layer.stat().st_size
        tokens = []
        for i in range(concurrency):
            tokens.append(hq.post("/sites", {"name": f"site-{i}"})["token"])
            hq.post(f"/sites/site-{i}/templates", {"template": "bench"})
        say(f"v2's new layer: {size / 1e6:.0f} MB; {concurrency} sites")
        return measure_serve(
            f"http://127.0.0.1:{port}",
            tokens,
            digest,
            size,
            repeats=repeats,
            hq_pid=proc.pid,
            layer=layer,
            cold=cold,
            say=say,
        )
    finally:
        stop_server(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layer-mib", type=int, default=384, help="MiB of data in the layer")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of alone + many")
    parser.add_argument("--concurrency", type=int, default=SITES, help="downloads at once")
    parser.add_argument(
        "--cold", action="store_true", help="each round reads the layer from disk, not cache"
    )
    args = parser.parse_args(argv)
    if shutil.which("curl") is None or shutil.which("qemu-io") is None:
        print("bench/serve.py needs curl and qemu-io: make system-packages", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="goldfleet-bench-serve-"))
    try:
        figures = run(work, args.layer_mib, args.repeats, args.concurrency, args.cold, print)
    except (BenchError, ClientError, subprocess.SubprocessError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"alone {figures['alone_mb_s']} MB/s, {figures['concurrency']} at once"
        f" {figures['aggregate_mb_s']} MB/s in all: serve_ratio {figures['serve_ratio']}"
        f" (target >= {RATIO_TARGET})"
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
