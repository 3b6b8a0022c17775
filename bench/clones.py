"""Benchmark: N linked clones through the API against a bare shell loop of ``qemu-img create``.

A real server process runs on a temporary home. A small template (64 MiB raw system image, one
1G temp and one 1G data volume) is uploaded, then N linked clones are created with one
``POST /clones`` and timed until ``GET /operations/{id}`` reports all N done. Every clone reported
done must be durable: the database holds N ``ready`` rows and the 3N volume files exist. In the
same run a bare ``bash`` loop makes the same 3N files with ``qemu-img create`` (one overlay on the
template's top layer plus two blank images per clone) in a folder on the same filesystem.

Targets (issue 2): ratio = goldfleet / bare loop <= 1.0, and server peak RSS (VmHWM) < 200 MB.
The run exits 0 whether or not a target is met; it exits non-zero only when the run itself fails.
The last line printed is one line of JSON with the figures.

    .venv/bin/python bench/clones.py [--clones 500] [--json-only]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from goldfleet.cli.client import Client, ClientError

MiB = 1 << 20
TEMPLATE = "bench"
SYSTEM_SIZE = 64 * MiB
TEMP_SIZE = "1G"
DATA_SIZE = "1G"
POLL_SECONDS = 0.02
RATIO_TARGET = 1.0
RSS_TARGET_MB = 200.0

BARE_LOOP = r"""
set -eu
cd "$1"
base=$2
n=$3
size_t=$4
size_d=$5
for ((i = 0; i < n; i++)); do
    qemu-img create -q -f qcow2 -b "$base" -F qcow2 "sys$i.qcow2"
    qemu-img create -q -f qcow2 "t$i.qcow2" "$size_t"
    qemu-img create -q -f qcow2 "d$i.qcow2" "$size_d"
done
"""


class BenchError(Exception):
    """The run itself failed (not a missed target)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def start_server(home: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``python -m goldfleet serve`` run directly (no shell), so its pid is the server's."""
    env = {**os.environ, "GOLDFLEET_HOME": str(home)}
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
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"server exited with {proc.returncode}: {log_tail(log)}")
            try:
                probe.get("/health")
                return proc
            except ClientError:
                time.sleep(0.05)
    finally:
        probe.close()
    raise BenchError(f"server did not answer /health in 60 s: {log_tail(log)}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(15)


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of the process, in MB (10^6 bytes)."""
    exe = os.readlink(f"/proc/{pid}/exe")
    if "python" not in Path(exe).name:
        raise BenchError(f"server pid {pid} is {exe}, not a python process")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            kib = int(line.split()[1])
            return kib * 1024 / 1e6
    raise BenchError(f"no VmHWM in /proc/{pid}/status")


def make_image(path: Path) -> None:
    """A 64 MiB raw disk with a few written regions (so the layer is not all zeroes)."""
    with path.open("wb") as f:
        f.truncate(SYSTEM_SIZE)
        for offset in (0, 1 * MiB, 2 * MiB):
            f.seek(offset)
            f.write(b"\x11" * 4096)


def import_template(client: Client, work: Path, store: Path) -> Path:
    """Upload the template; returns the absolute path of its top layer file."""
    image = work / "system.raw"
    make_image(image)
    client.upload(
        "/templates/import",
        image,
        {"name": TEMPLATE, "format": "raw", "temp": [TEMP_SIZE], "data": [DATA_SIZE]},
    )
    image.unlink()
    versions = client.get(f"/templates/{TEMPLATE}/versions")
    current = [v for v in versions if v["current"]]
    if len(current) != 1:
        raise BenchError(f"template {TEMPLATE} has no single current version: {versions}")
    hexdigest = current[0]["top_layer"].removeprefix("sha256:")
    layer = (store / "layers" / f"sha256-{hexdigest}.qcow2").resolve()
    if not layer.is_file():
        raise BenchError(f"the top layer file {layer} does not exist")
    return layer


def time_goldfleet(client: Client, n: int) -> tuple[float, float, int]:
    """Seconds from sending POST /clones until the operation reports all n done; also the
    seconds the POST itself took to answer, and the operation's id."""
    t0 = time.perf_counter()
    r = client.post("/clones", {"template": TEMPLATE, "count": n, "wait": False})
    post_s = time.perf_counter() - t0
    op = r["operation"]
    while op["status"] == "running":
        time.sleep(POLL_SECONDS)
        op = client.get(f"/operations/{op['id']}")
    elapsed = time.perf_counter() - t0
    if op["status"] != "done" or op["done"] != n or op["failed"]:
        raise BenchError(
            f"operation {op['id']} ended {op['status']} with {op['done']} done,"
            f" {op['failed']} failed of {n}: {op.get('error')}"
        )
    return elapsed, post_s, op["id"]


def check_durable(home: Path, store: Path, op_id: int, n: int, layer: Path) -> None:
    """Every clone reported done is a committed ``ready`` row with its three volume files."""
    db = sqlite3.connect(f"file:{home / 'goldfleet.db'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT uid, status FROM clones WHERE operation_id = ?", (op_id,)
        ).fetchall()
    finally:
        db.close()
    ready = [uid for uid, status in rows if status == "ready"]
    if len(rows) != n or len(ready) != n:
        raise BenchError(f"the database holds {len(ready)} ready of {len(rows)} clones, not {n}")
    missing = [
        p
        for uid in ready
        for p in (
            store / "clones" / uid / f for f in ("system.qcow2", "temp0.qcow2", "data0.qcow2")
        )
        if not p.is_file()
    ]
    if missing:
        raise BenchError(f"{len(missing)} of {3 * n} volume files are missing, e.g. {missing[0]}")
    # one system volume, read back: an overlay on the template's top layer
    system = store / "clones" / ready[0] / "system.qcow2"
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-f", "qcow2", "--output=json", str(system)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    if Path(info.get("backing-filename", "")).name != layer.name:
        raise BenchError(f"{system} is not an overlay on {layer.name}: {info}")


def time_bare(work: Path, layer: Path, n: int) -> float:
    """Seconds for one bash loop making the same 3n files with qemu-img create."""
    bare = work / "bare"
    bare.mkdir()
    argv = ["bash", "-c", BARE_LOOP, "bare-loop", str(bare), str(layer), str(n)]
    argv += [TEMP_SIZE, DATA_SIZE]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise BenchError(f"the bare loop failed ({proc.returncode}): {proc.stderr[-2000:]}")
    made = sum(1 for _ in bare.iterdir())
    if made != 3 * n:
        raise BenchError(f"the bare loop made {made} files, not {3 * n}")
    return elapsed


def run(n: int, say: callable) -> dict[str, float | int]:  # type: ignore[valid-type]
    work = Path(tempfile.mkdtemp(prefix="goldfleet-bench-"))
    home = work / "home"
    store = home / "store"
    log = work / "server.log"
    proc: subprocess.Popen[bytes] | None = None
    client: Client | None = None
    try:
        port = free_port()
        say(f"goldfleet clone benchmark: {n} linked clones; work dir {work}")
        proc = start_server(home, port, log)
        token = (home / "admin.token").read_text().strip()
        client = Client(f"http://127.0.0.1:{port}", token)
        say(f"server pid {proc.pid} on 127.0.0.1:{port}")

        layer = import_template(client, work, store)
        say(f"imported template {TEMPLATE}: system 64M, temp {TEMP_SIZE}, data {DATA_SIZE}")

        goldfleet_s, post_s, op_id = time_goldfleet(client, n)
        say(
            f"goldfleet: {n} clones done in {goldfleet_s:.3f} s (operation {op_id};"
            f" POST /clones answered in {post_s:.3f} s)"
        )
        check_durable(home, store, op_id, n, layer)
        say(f"durable: {n} ready rows in the database, {3 * n} volume files on disk")

        bare_s = time_bare(work, layer, n)
        say(f"bare loop: {3 * n} files in {bare_s:.3f} s")

        if proc.poll() is not None:
            raise BenchError(f"server exited with {proc.returncode}: {log_tail(log)}")
        rss = peak_rss_mb(proc.pid)
        return {
            "goldfleet_s": round(goldfleet_s, 4),
            "bare_s": round(bare_s, 4),
            "ratio": round(goldfleet_s / bare_s, 4),
            "peak_rss_mb": round(rss, 1),
            "clones": n,
        }
    except ClientError as exc:
        tail = log_tail(log) if proc is not None else ""
        raise BenchError(f"API error ({exc.status}): {exc.message}\n{tail}") from exc
    finally:
        if client is not None:
            client.close()
        if proc is not None:
            stop_server(proc)
        shutil.rmtree(work, ignore_errors=True)


def summary(r: dict[str, float | int]) -> str:
    n = int(r["clones"])

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    ratio_ok = r["ratio"] <= RATIO_TARGET
    rss_ok = r["peak_rss_mb"] < RSS_TARGET_MB
    lines = [
        "",
        f"{'':24}{'total s':>10}{'per clone ms':>14}",
        f"{'goldfleet (API)':24}{r['goldfleet_s']:>10.3f}{1000 * r['goldfleet_s'] / n:>14.2f}",
        f"{'bare qemu-img loop':24}{r['bare_s']:>10.3f}{1000 * r['bare_s'] / n:>14.2f}",
        "",
        f"ratio goldfleet/bare  {r['ratio']:.3f}   target <= {RATIO_TARGET}   {verdict(ratio_ok)}",
        f"server peak RSS       {r['peak_rss_mb']:.1f} MB   target < {RSS_TARGET_MB:.0f} MB   "
        f"{verdict(rss_ok)}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clones", type=int, default=500, help="clones to create (default 500)")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    if not 1 <= args.clones <= 10_000:
        parser.error("--clones must be between 1 and 10000")
    if shutil.which("qemu-img") is None:
        print("bench failed: qemu-img is not installed (Debian qemu-utils)", file=sys.stderr)
        return 2

    def say(text: str) -> None:
        if not args.json_only:
            print(text, flush=True)

    try:
        result = run(args.clones, say)
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    say(summary(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
