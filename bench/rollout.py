"""Benchmark: recreate N linked clones on a new version, against a bare ``qemu-img create`` loop.

What is timed
    A real server process runs on a temporary home with the ``sim`` driver at zero latency. A
    small template (64 MiB raw system image, one 1G temp and one 1G data volume) is uploaded and
    N linked clones are made (timed on their own, as ``create_s``). Then one maintenance round:
    enter, write 4 KiB into the overlay with ``qemu-io``, and exit with ``recreate: "linked"``.
    ``total_s`` runs from sending the exit request until ``GET /operations/{id}`` reports
    ``done == N``. The result is checked: N ``ready`` clones on v2 in the database, each system
    volume an overlay on v2's top layer.

Baseline
    In the same run a bare ``bash`` loop makes N ``qemu-img create -f qcow2 -b <v2 top layer,
    absolute> -F qcow2`` overlays in a folder on the same filesystem: ``bare_s``. ``ratio`` is
    total_s / bare_s (target <= 1.2).

The control plane's own time per clone (``per_clone_ms``, target <= 3 ms)
    The server is stopped and the same recreate is run once more in this process, on the same
    home and settings (a third version: enter, write, exit, recreate linked), with every volume
    build (``VolumeStore.build_clone``: the system and temp files of a clone) and every driver
    call timed where it runs. ``per_clone_ms`` = (wall time of that recreate − the time during
    which at least one volume build or driver call was under way) / N: the time the rollout
    spent on the control plane alone (claiming, loading plans, recording outcomes in the
    database, scheduling threads, waiting between passes), on the critical path. Work that the
    control plane does while a volume is being built on another thread is not counted, since it
    costs the rollout no time; the exit's own sealing of the overlay (a fixed cost, not per
    clone) is counted as control plane, which errs against goldfleet. The same run also prints
    where the wall time went (claim, execute, record, finish, other) and, from the API run,
    the server's CPU time per clone (``/proc/<pid>/stat``, its own threads only, qemu-img
    children excluded; it includes the in-process file copies of volume building and the
    simulated hypervisor).

Peak RSS
    VmHWM of the server process after the API run (target < 300 MB).

The run exits 0 whether or not a target is met; it exits non-zero only when the run itself fails.
The last line printed is one line of JSON with total_s, bare_s, ratio, per_clone_ms, peak_rss_mb
(and a few more figures).

    .venv/bin/python bench/rollout.py [--clones 2000] [--json-only] [--profile] [--sim-hosts K]
                                      [--edge]

``--profile`` runs the recreate a fourth time under cProfile (runner thread and worker threads)
and prints where the time goes; it changes none of the figures. ``--sim-hosts K`` simulates K
hosts instead of the server's default 2: the per-host limit (4 clones rebuilt at once per host)
times the hosts caps each pass, so with 2 hosts a pass claims 8 clones, not ``batch_size`` (25).
``--edge`` turns edge stores on (docs/edge.md: a folder per host under the work dir): new
clones are placed by goldfleet, and each recreate first copies the new version's layer to each
host (checked: hash, backing reference, ``qemu-img check``) and looks at the top layer's file
once per clone; the JSON then says ``"edge_stores": true``.
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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from goldfleet.cli.client import Client, ClientError

MiB = 1 << 20
TEMPLATE = "bench"
SYSTEM_SIZE = 64 * MiB
TEMP_SIZE = "1G"
DATA_SIZE = "1G"
POLL_SECONDS = 0.02
RATIO_TARGET = 1.2
PER_CLONE_TARGET_MS = 3.0
RSS_TARGET_MB = 300.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

BARE_LOOP = r"""
set -eu
cd "$1"
base=$2
n=$3
for ((i = 0; i < n; i++)); do
    qemu-img create -q -f qcow2 -b "$base" -F qcow2 "sys$i.qcow2"
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


SIM_HOSTS: list[str] = []  # empty: the server's default sim hosts (--sim-hosts)
EDGE: dict[str, Path] = {}  # "root": the edge stores' root with --edge


def server_env(home: Path) -> dict[str, str]:
    """The embedded default (SQLite, sim driver) with zero simulated latency."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOLDFLEET_")}
    env.update({"GOLDFLEET_HOME": str(home), "GOLDFLEET_DRIVER": "sim", "GOLDFLEET_SIM_PLAN": ""})
    if SIM_HOSTS:
        env["GOLDFLEET_SIM_HOSTS"] = json.dumps(SIM_HOSTS)
    if EDGE:
        env["GOLDFLEET_EDGE_ROOT"] = str(EDGE["root"])
    return env


def start_server(home: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``python -m goldfleet serve`` run directly (no shell), so its pid is the server's."""
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "goldfleet", "serve", "--port", str(port)],
            env=server_env(home),
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
        proc.wait(30)
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
            return int(line.split()[1]) * 1024 / 1e6
    raise BenchError(f"no VmHWM in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process's own threads (children not included)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def make_image(path: Path) -> None:
    """A 64 MiB raw disk with a few written regions (so the layer is not all zeroes)."""
    with path.open("wb") as f:
        f.truncate(SYSTEM_SIZE)
        for offset in (0, 1 * MiB, 2 * MiB):
            f.seek(offset)
            f.write(b"\x11" * 4096)


def qemu_io_write(path: Path, byte: int) -> None:
    """The admin's change: 4 KiB of ``byte`` at 1 MiB, written through qemu-io."""
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -q -P {byte:#x} 1M 4k", str(path)],
        check=True,
        capture_output=True,
    )


def top_layer(client: Client, store: Path, number: int) -> Path:
    """Absolute path of the top layer file of version ``number``."""
    versions = client.get(f"/templates/{TEMPLATE}/versions")
    found = [v for v in versions if v["number"] == number]
    if len(found) != 1:
        raise BenchError(f"template {TEMPLATE} has no version {number}: {versions}")
    hexdigest = found[0]["top_layer"].removeprefix("sha256:")
    layer = (store / "layers" / f"sha256-{hexdigest}.qcow2").resolve()
    if not layer.is_file():
        raise BenchError(f"the top layer file {layer} does not exist")
    return layer


def wait_operation(client: Client, op: dict[str, Any], n: int) -> dict[str, Any]:
    while op["status"] in ("running", "scheduled") or op["done"] < n:
        if op["status"] not in ("running", "scheduled"):
            break
        time.sleep(POLL_SECONDS)
        op = client.get(f"/operations/{op['id']}")
    if op["status"] != "done" or op["done"] != n or op["failed"]:
        raise BenchError(
            f"operation {op['id']} ended {op['status']} with {op['done']} done,"
            f" {op['failed']} failed of {n}: {op.get('error')}"
        )
    return op


def check_on_version(home: Path, store: Path, n: int, number: int, layer: Path) -> None:
    """Every clone is a committed ``ready`` row on version ``number``; one system volume, read
    back, is an overlay on that version's top layer."""
    db = sqlite3.connect(f"file:{home / 'goldfleet.db'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT c.uid, c.status, v.number FROM clones c JOIN versions v ON v.id = c.version_id"
        ).fetchall()
    finally:
        db.close()
    good = [uid for uid, status, v in rows if status == "ready" and v == number]
    if len(rows) != n or len(good) != n:
        raise BenchError(f"{len(good)} of {len(rows)} clones are ready on v{number}, not {n}")
    system = store / "clones" / good[-1] / "system.qcow2"
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
    """Seconds for one bash loop making n overlays on ``layer`` with qemu-img create."""
    bare = work / "bare"
    bare.mkdir()
    argv = ["bash", "-c", BARE_LOOP, "bare-loop", str(bare), str(layer), str(n)]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise BenchError(f"the bare loop failed ({proc.returncode}): {proc.stderr[-2000:]}")
    made = sum(1 for _ in bare.iterdir())
    if made != n:
        raise BenchError(f"the bare loop made {made} files, not {n}")
    shutil.rmtree(bare)
    return elapsed


# --- the API run -------------------------------------------------------------------------


def api_run(work: Path, home: Path, n: int, say: Callable[[str], None]) -> dict[str, float]:
    store = home / "store"
    log = work / "server.log"
    port = free_port()
    proc = start_server(home, port, log)
    token = (home / "admin.token").read_text().strip()
    client = Client(f"http://127.0.0.1:{port}", token, timeout=600)
    try:
        say(f"server pid {proc.pid} on 127.0.0.1:{port}")
        image = work / "system.raw"
        make_image(image)
        client.upload(
            "/templates/import",
            image,
            {"name": TEMPLATE, "format": "raw", "temp": [TEMP_SIZE], "data": [DATA_SIZE]},
        )
        image.unlink()
        say(f"imported template {TEMPLATE}: system 64M, temp {TEMP_SIZE}, data {DATA_SIZE}")

        t0 = time.perf_counter()
        r = client.post("/clones", {"template": TEMPLATE, "count": n, "wait": False})
        wait_operation(client, r["operation"], n)
        create_s = time.perf_counter() - t0
        say(f"created {n} linked clones in {create_s:.3f} s (not part of total_s)")

        overlay = Path(client.post(f"/templates/{TEMPLATE}/maintenance/enter")["overlay_path"])
        qemu_io_write(overlay, 0x22)

        cpu0 = cpu_seconds(proc.pid)
        t0 = time.perf_counter()
        r = client.post(f"/templates/{TEMPLATE}/maintenance/exit", {"recreate": "linked"})
        exit_s = time.perf_counter() - t0
        op = r["operation"]
        if op is None or op["total"] != n:
            raise BenchError(f"maintenance exit did not start a recreate of {n} clones: {r}")
        wait_operation(client, op, n)
        total_s = time.perf_counter() - t0
        cpu_s = cpu_seconds(proc.pid) - cpu0
        say(
            f"recreate: {n} clones on v2 in {total_s:.3f} s (exit answered in {exit_s:.3f} s;"
            f" server CPU {cpu_s:.3f} s)"
        )
        layer = top_layer(client, store, 2)
        check_on_version(home, store, n, 2, layer)
        say(f"checked: {n} ready clones on v2, system volumes on {layer.name[:19]}…")

        bare_s = time_bare(work, layer, n)
        say(f"bare loop: {n} qemu-img create overlays in {bare_s:.3f} s")

        if proc.poll() is not None:
            raise BenchError(f"server exited with {proc.returncode}: {log_tail(log)}")
        rss = peak_rss_mb(proc.pid)
        return {
            "total_s": total_s,
            "bare_s": bare_s,
            "create_s": create_s,
            "exit_s": exit_s,
            "cpu_s": cpu_s,
            "peak_rss_mb": rss,
        }
    except ClientError as exc:
        raise BenchError(f"API error ({exc.status}): {exc.message}\n{log_tail(log)}") from exc
    finally:
        client.close()
        stop_server(proc)


# --- the same recreate, in process, with its time accounted -------------------------------


@dataclass
class Timeline:
    """Intervals (start, end) by kind, appended from any thread."""

    spans: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wrap(self, kind: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                t1 = time.perf_counter()
                with self.lock:
                    self.spans.setdefault(kind, []).append((t0, t1))

        timed.__name__ = getattr(fn, "__name__", kind)
        return timed

    def total(self, kind: str) -> float:
        return sum(b - a for a, b in self.spans.get(kind, []))

    def union(self, *kinds: str, start: float, end: float) -> float:
        """Wall time inside [start, end] covered by at least one interval of ``kinds``."""
        spans = sorted(
            (max(a, start), min(b, end))
            for k in kinds
            for a, b in self.spans.get(k, [])
            if b > start and a < end
        )
        covered, cur_a, cur_b = 0.0, None, None
        for a, b in spans:
            if cur_b is None or a > cur_b:
                if cur_b is not None:
                    covered += cur_b - cur_a
                cur_a, cur_b = a, b
            else:
                cur_b = max(cur_b, b)
        if cur_b is not None:
            covered += cur_b - cur_a
        return covered


DRIVER_METHODS = (
    "define",
    "undefine",
    "start",
    "shutdown",
    "states",
    "state",
    "sessions",
    "send_message",
    "logoff",
    "host_of",
    "migrate",
)


def accounted_run(home: Path, n: int) -> dict[str, float]:
    """Run one more maintenance round with recreate in this process, timing volume builds,
    driver calls and the runner's phases."""
    os.environ.update(server_env(home))
    from goldfleet.bootstrap import bootstrap
    from goldfleet.config import Settings
    from goldfleet.domain.model import RecreateScope
    from goldfleet.home import recover
    from goldfleet.services import catalog, rollouts

    ctx = bootstrap(Settings())
    tl = Timeline()
    runner = ctx.runner
    try:
        recover(ctx)
        ctx.volumes.build_clone = tl.wrap("build", ctx.volumes.build_clone)  # type: ignore[method-assign]
        for name in DRIVER_METHODS:
            if hasattr(ctx.driver, name):
                setattr(ctx.driver, name, tl.wrap("driver", getattr(ctx.driver, name)))
        for name in ("_claim", "_execute", "_finish_if_done", "_notify"):
            setattr(runner, name, tl.wrap(name, getattr(runner, name)))
        work = runner.work  # type: ignore[union-attr]
        work.load = tl.wrap("load_plans", work.load)  # type: ignore[method-assign]
        work.record = tl.wrap("record", work.record)  # type: ignore[method-assign]
        work.execute = tl.wrap("execute_one", work.execute)  # type: ignore[method-assign]
        try:
            entered = catalog.enter_maintenance(ctx, TEMPLATE, actor="bench")
            qemu_io_write(ctx.layers.dir / Path(entered.overlay_path).name, 0x33)
            t0 = time.perf_counter()
            out = catalog.exit_maintenance(
                ctx, TEMPLATE, recreate=RecreateScope.LINKED, actor="bench"
            )
            if out.operation is None or out.operation.total != n:
                raise BenchError(f"the in-process exit did not recreate {n} clones: {out}")
            runner.wait(out.operation.id)  # type: ignore[union-attr]
            t1 = time.perf_counter()
            op = rollouts.show_operation(ctx, out.operation.id)
            if op.status != "done" or op.done != n:
                raise BenchError(f"the in-process recreate ended {op.status}, {op.done} of {n}")
        finally:
            for name in ("load", "record", "execute"):
                delattr(work, name)  # back to the class's methods
        wall = t1 - t0
        busy = tl.union("build", "driver", start=t0, end=t1)
        return {
            "wall_s": wall,
            "busy_s": busy,
            "build_union_s": tl.union("build", start=t0, end=t1),
            "driver_union_s": tl.union("driver", start=t0, end=t1),
            "build_sum_s": tl.total("build"),
            "driver_sum_s": tl.total("driver"),
            "claim_s": tl.total("_claim"),
            "execute_s": tl.total("_execute"),
            "load_plans_s": tl.total("load_plans"),
            "pool_s": tl.union("execute_one", start=t0, end=t1),
            "record_s": tl.total("record"),
            "finish_s": tl.total("_finish_if_done"),
            "heartbeat_s": tl.total("_heartbeat"),
            "batches": len(tl.spans.get("_execute", [])),
            "per_clone_ms": 1000 * (wall - busy) / n,
        }
    finally:
        runner.shutdown()  # type: ignore[union-attr]
        ctx.engine.dispose()


def profiled_run(home: Path, n: int, say: Callable[[str], None], top: int = 20) -> None:
    """One more round (not part of any figure) under cProfile: the runner thread's passes
    and the worker threads' per-clone execution, each summed over the whole recreate."""
    import cProfile
    import io
    import pstats

    from goldfleet.bootstrap import bootstrap
    from goldfleet.config import Settings
    from goldfleet.domain.model import RecreateScope
    from goldfleet.services import catalog

    ctx = bootstrap(Settings())
    runner = ctx.runner
    profiles: dict[tuple[str, int], cProfile.Profile] = {}

    def wrap(kind: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def profiled(*args: Any, **kwargs: Any) -> Any:
            key = (kind, threading.get_ident())
            prof = profiles.get(key)
            if prof is None:
                prof = profiles[key] = cProfile.Profile()
            return prof.runcall(fn, *args, **kwargs)

        return profiled

    try:
        for name in ("_claim", "_execute", "_finish_if_done"):
            setattr(runner, name, wrap("runner", getattr(runner, name)))
        work = runner.work  # type: ignore[union-attr]
        work.execute = wrap("worker", work.execute)  # type: ignore[method-assign]
        try:
            entered = catalog.enter_maintenance(ctx, TEMPLATE, actor="bench")
            qemu_io_write(ctx.layers.dir / Path(entered.overlay_path).name, 0x44)
            out = catalog.exit_maintenance(
                ctx, TEMPLATE, recreate=RecreateScope.LINKED, actor="bench"
            )
            runner.wait(out.operation.id)  # type: ignore[union-attr]
        finally:
            del work.execute  # back to the class's method
    finally:
        runner.shutdown()  # type: ignore[union-attr]
        ctx.engine.dispose()
    for kind, order in (("runner", "cumulative"), ("worker", "tottime")):
        stats = None
        for (k, _), prof in profiles.items():
            if k != kind:
                continue
            if stats is None:
                stats = pstats.Stats(prof, stream=io.StringIO())
            else:
                stats.add(prof)
        if stats is None:
            continue
        stats.strip_dirs().sort_stats(order).print_stats(top)
        # and goldfleet's own functions, where the control plane's time is
        stats.sort_stats("cumulative").print_stats(r"goldfleet|operations|clones|volumes", top)
        say(f"\nprofile of the {kind} thread(s), {n} clones, by {order}:")
        say(stats.stream.getvalue().strip())  # type: ignore[attr-defined]


# --- report --------------------------------------------------------------------------------


def run(n: int, say: Callable[[str], None], profile: bool = False) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="goldfleet-bench-"))
    home = work / "home"
    try:
        if EDGE:
            EDGE["root"] = work / "edge"
            for host in SIM_HOSTS or ["sim-host-1", "sim-host-2"]:
                (EDGE["root"] / host).mkdir(parents=True)
        say(f"goldfleet rollout benchmark: recreate {n} linked clones; work dir {work}")
        api = api_run(work, home, n, say)
        if EDGE:
            held = {
                h.name: len(list((h / "layers").glob("sha256-*.qcow2")))
                for h in sorted(EDGE["root"].iterdir())
            }
            if not all(held.values()):
                raise BenchError(f"the edge stores were not used: layers per host {held}")
            say(f"edge stores: layers held per host after the recreate: {held}")
        say("in-process accounting run: the same recreate once more (v2 → v3) …")
        acc = accounted_run(home, n)
        say(
            f"in-process recreate: {acc['wall_s']:.3f} s wall, of which {acc['busy_s']:.3f} s"
            f" with a volume build or driver call under way"
        )
        if profile:
            say("profiled run: the same recreate once more (v3 → v4), not part of the figures")
            profiled_run(home, n, say)
        return {
            "total_s": round(api["total_s"], 4),
            "bare_s": round(api["bare_s"], 4),
            "ratio": round(api["total_s"] / api["bare_s"], 4),
            "per_clone_ms": round(acc["per_clone_ms"], 3),
            "peak_rss_mb": round(api["peak_rss_mb"], 1),
            "clones": n,
            "create_s": round(api["create_s"], 4),
            "server_cpu_ms_per_clone": round(1000 * api["cpu_s"] / n, 3),
            "accounting": {k: round(v, 4) for k, v in acc.items()},
            "edge_stores": bool(EDGE),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summary(r: dict[str, Any]) -> str:
    n = int(r["clones"])
    a = r["accounting"]

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    wall = a["wall_s"]
    other = wall - a["claim_s"] - a["execute_s"] - a["finish_s"] - a["heartbeat_s"]
    commit = a["execute_s"] - a["load_plans_s"] - a["pool_s"] - a["record_s"]
    lines = [
        "",
        f"{'':28}{'total s':>10}{'per clone ms':>14}",
        f"{'goldfleet recreate (API)':28}{r['total_s']:>10.3f}{1000 * r['total_s'] / n:>14.3f}",
        f"{'bare qemu-img create loop':28}{r['bare_s']:>10.3f}{1000 * r['bare_s'] / n:>14.3f}",
        f"{'(create, not in total)':28}{r['create_s']:>10.3f}{1000 * r['create_s'] / n:>14.3f}",
        "",
        f"where the in-process recreate's {wall:.3f} s went ({a['batches']:.0f} batches):",
        f"  claim (runner thread)            {a['claim_s']:8.3f} s",
        f"  execute: load plans              {a['load_plans_s']:8.3f} s",
        f"  execute: worker pool             {a['pool_s']:8.3f} s"
        f"   (build sum {a['build_sum_s']:.3f} s, driver sum {a['driver_sum_s']:.3f} s)",
        f"  execute: record outcomes         {a['record_s']:8.3f} s",
        f"  execute: close items, commit     {commit:8.3f} s",
        f"  finish check                     {a['finish_s']:8.3f} s",
        f"  heartbeat                        {a['heartbeat_s']:8.3f} s",
        f"  other (loop, waits)              {other:8.3f} s",
        f"  wall with a build or driver call {a['busy_s']:8.3f} s"
        f"   (builds {a['build_union_s']:.3f} s, driver {a['driver_union_s']:.3f} s)",
        "",
        f"ratio total/bare       {r['ratio']:.3f}   target <= {RATIO_TARGET}"
        f"   {verdict(r['ratio'] <= RATIO_TARGET)}",
        f"control plane / clone  {r['per_clone_ms']:.3f} ms   target <= {PER_CLONE_TARGET_MS}"
        f"   {verdict(r['per_clone_ms'] <= PER_CLONE_TARGET_MS)}",
        f"server CPU / clone     {r['server_cpu_ms_per_clone']:.3f} ms   (API run, all threads,"
        f" incl. file copies and the sim driver)",
        f"server peak RSS        {r['peak_rss_mb']:.1f} MB   target < {RSS_TARGET_MB:.0f} MB"
        f"   {verdict(r['peak_rss_mb'] < RSS_TARGET_MB)}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clones", type=int, default=2000, help="clones (default 2000)")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON line")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="afterwards, run the recreate once more under cProfile and print where time goes",
    )
    parser.add_argument(
        "--sim-hosts",
        type=int,
        default=0,
        help="simulated hosts (default: the server's, 2); the per-host limit (4) times the"
        " hosts caps the clones rebuilt at once",
    )
    parser.add_argument(
        "--edge", action="store_true", help="with edge stores on (a copy of the layers per host)"
    )
    args = parser.parse_args(argv)
    if args.edge:
        EDGE["root"] = Path()  # set to a folder of the work dir by run()
    if not 1 <= args.clones <= 10_000:
        parser.error("--clones must be between 1 and 10000")
    if args.sim_hosts < 0:
        parser.error("--sim-hosts must be positive")
    SIM_HOSTS[:] = [f"sim-host-{i + 1}" for i in range(args.sim_hosts)]
    for tool in ("qemu-img", "qemu-io"):
        if shutil.which(tool) is None:
            print(f"bench failed: {tool} is not installed (Debian qemu-utils)", file=sys.stderr)
            return 2

    def say(text: str) -> None:
        if not args.json_only:
            print(text, flush=True)

    try:
        result = run(args.clones, say, args.profile)
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    say(summary(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
