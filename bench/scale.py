"""Benchmark: the 10,000-clone fleet on the sim driver, each figure next to its limit (issue 10).

    make bench-scale                # 10,000 clones (a few minutes)
    .venv/bin/python bench/scale.py [--clones 2000] [--json-only] [--skip verify,serve]

A real server process (SQLite, ``sim`` driver at zero latency, two sim hosts) runs on a
temporary home. A small template is uploaded (64 MiB raw system image with a few written
regions, one 1G temp and one 1G data volume: three volume files per clone). Then, in one run:

Clone creation (``create_ms_per_clone``, ``limit_ms_per_clone``, ``create_ratio``)
    ``goldfleet clone create bench --count N`` is run as an admin runs it (the CLI as a
    process, following the operation with its progress bar, through the server's HTTP API)
    and timed from process start to exit; every clone it reports done is checked to be a
    committed ``ready`` row with a sim VM and its three volume files, the system volume an
    overlay on the template's top layer.

    The limit is a bare Python loop on the same disk (a folder beside the store) that, per
    clone, makes a fresh folder, copies the three prototype files of a clone into it (in the
    kernel, ``copy_file_range``) with an fsync of each, and fsyncs the folder: the issue's
    "copy + fsync" limit, one clone after the other, no process spawned. Its prototypes are
    made by the same qemu-img commands as the server's and checked, after the create, to hold
    exactly the bytes of goldfleet's volumes (192 KiB each). Half of the limit's clones are
    made before the create and half after, in chunks, so that a neighbour's load on a shared
    machine falls on both alike. ``create_ratio`` = create_ms_per_clone / limit_ms_per_clone;
    target (issue 10) <= 1.5.

    Two more figures say what the ratio is made of. ``sparse_limit_ms_per_clone`` is the same
    loop writing only the prototypes' pages that are not all zeroes (12 KiB of 192 KiB, held in
    memory), the rest left as holes: the same bytes read back, less written; it is timed in
    the same chunks as the copy loop, and ``create_sparse_ratio`` is goldfleet against it.
    ``create_cpu_ms_per_clone`` is the server's CPU time (all its threads) for the create,
    ``limit_cpu_ms_per_clone`` the copy loop's: steadier than wall time when other work shares
    the machine.

Server peak RSS (``peak_rss_mb``)
    VmHWM of the server process, read after every measurement (the fleet built, listed and
    verified); target < 400 MB.

The other figures come from the benchmarks of their own areas, run here on the same fleet and
server when their module is in ``bench/`` (each is optional: a missing one, or one whose
functions differ from these, gives ``null`` with a note). The functions called, as assumed:

    bench/cli.py     cli_env(home: Path, pycache: Path) -> dict[str, str]
                     measure_list(env: dict[str, str], expected: int) -> dict     (list_s, …)
                     measure_cli(env: dict[str, str]) -> dict            (cli_overhead_ms, …)
                     run(n: int, runs: int, list_runs: int, say) -> dict  (its own server)
    bench/verify.py  measure_verify(home: Path, *, say: Callable[[str], None]) -> dict
                                                    (verify_s, verify_limit_s, verify_ratio, …)
    bench/serve.py   run(work: Path, *, layer_mib: int, repeats: int, concurrency: int,
                         cold: bool, say: Callable[[str], None]) -> dict     (serve_ratio, …)

``env`` is the environment of a CLI pointed at this run's server; ``home`` the server's home,
the server running and idle (list and CLI start-up first, then verify, which touches 1% of the
data volumes).

CLI start-up (``cli_overhead_ms``) is measured as the issue states it, on an idle server: the
one bench/cli.py starts with 3 clones (``run``). Against this run's server ``clone list
--json`` prints the whole fleet, so that time is mostly the listing; it is printed too, as
``cli_overhead_fleet_ms`` (the same commands, less the same ``import httpx``), not as
start-up. ``serve`` builds an HQ of its own in a folder of this run: the fleet's 64 MiB
template is too small to measure serving a layer.

The run exits 0 whether or not a target is met; it exits non-zero only when the run itself
fails. The last line printed is one JSON object with at least ``clones``,
``create_ms_per_clone``, ``limit_ms_per_clone``, ``create_ratio``, ``verify_s``,
``verify_limit_s``, ``verify_ratio``, ``list_s``, ``cli_overhead_ms``, ``serve_ratio`` and
``peak_rss_mb``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from goldfleet.cli.client import Client, ClientError

MiB = 1 << 20
TEMPLATE = "bench"
SYSTEM_SIZE = 64 * MiB
TEMP_SIZE = "1G"
DATA_SIZE = "1G"
VOLUME_FILES = ("system.qcow2", "temp0.qcow2", "data0.qcow2")
CREATE_RATIO_TARGET = 1.5
RSS_TARGET_MB = 400.0
SERVE_LAYER_MIB = 384
BENCH_DIR = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

Say = Callable[[str], None]


class BenchError(Exception):
    """The run itself failed (not a missed target)."""


# --- the server -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def server_env(home: Path) -> dict[str, str]:
    """The embedded default (SQLite, sim driver) with zero simulated latency."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOLDFLEET_")}
    env.update({"GOLDFLEET_HOME": str(home), "GOLDFLEET_DRIVER": "sim", "GOLDFLEET_SIM_PLAN": ""})
    return env


def cli_env(home: Path) -> dict[str, str]:
    """What an admin's shell has: the home, which names the server and holds the token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOLDFLEET_")}
    env.pop("COLUMNS", None)
    return {**env, "GOLDFLEET_HOME": str(home)}


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
    current = [v for v in client.get(f"/templates/{TEMPLATE}/versions") if v["current"]]
    if len(current) != 1:
        raise BenchError(f"template {TEMPLATE} has no single current version")
    hexdigest = current[0]["top_layer"].removeprefix("sha256:")
    layer = (store / "layers" / f"sha256-{hexdigest}.qcow2").resolve()
    if not layer.is_file():
        raise BenchError(f"the top layer file {layer} does not exist")
    return layer


# --- clone creation and its limit -----------------------------------------------------------


def time_create(env: dict[str, str], n: int) -> tuple[float, dict[str, Any]]:
    """``goldfleet clone create bench --count n`` as a process, as an admin runs it (its
    progress bar follows the operation): its wall time and the operation it reports."""
    argv = [sys.executable, "-m", "goldfleet", "clone", "create", TEMPLATE, "--count", str(n)]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=7200)
    elapsed = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    found = re.search(r"operation (\d+) (\w+): (\d+) done, (\d+) failed of (\d+)", proc.stdout)
    if proc.returncode != 0 or found is None:
        raise BenchError(f"clone create exited {proc.returncode}: {out[-2000:]}")
    op_id, status, done, failed, total = found.groups()
    if (status, int(done), int(failed), int(total)) != ("done", n, 0, n):
        raise BenchError(f"operation {op_id} ended {status}: {done} done, {failed} failed of {n}")
    return elapsed, {"id": int(op_id), "status": status, "done": int(done)}


def check_created(home: Path, op_id: int, n: int, layer: Path) -> None:
    """Every clone reported done is a committed ``ready`` row with its three volume files; one
    system volume, read back through qemu-img, is an overlay on the template's top layer."""
    store = home / "store"
    db = sqlite3.connect(f"file:{home / 'goldfleet.db'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT uid, status FROM clones WHERE operation_id = ?", (op_id,)
        ).fetchall()
        defined = db.execute("SELECT count(*) FROM sim_domains").fetchone()[0]
    finally:
        db.close()
    ready = [uid for uid, status in rows if status == "ready"]
    if len(rows) != n or len(ready) != n:
        raise BenchError(f"the database holds {len(ready)} ready of {len(rows)} clones, not {n}")
    if defined != n:
        raise BenchError(f"the sim driver holds {defined} VMs, not {n}")
    missing = [
        store / "clones" / uid / f
        for uid in ready
        for f in VOLUME_FILES
        if not (store / "clones" / uid / f).is_file()
    ]
    if missing:
        raise BenchError(f"{len(missing)} of {3 * n} volume files are missing, e.g. {missing[0]}")
    system = store / "clones" / ready[-1] / "system.qcow2"
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


def make_prototypes(folder: Path, layer: Path) -> list[tuple[Path, str]]:
    """The three files every clone's volumes are copies of, made by the same qemu-img
    commands the server runs (store/volumes.py), paired with the clone's file name; checked
    against the server's clones after the create (:func:`check_prototypes`)."""
    folder.mkdir()
    system, blank = folder / "overlay.qcow2", folder / "blank.qcow2"
    backing = f"../../layers/{layer.name}"
    for argv in (
        ["-b", backing, "-F", "qcow2", "-u", str(system), str(SYSTEM_SIZE)],
        [str(blank), str(parse_size(TEMP_SIZE))],
    ):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *argv], check=True)
    if parse_size(DATA_SIZE) != parse_size(TEMP_SIZE):
        raise BenchError("the limit assumes temp and data volumes of one size")
    return [(system, "system.qcow2"), (blank, "temp0.qcow2"), (blank, "data0.qcow2")]


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def check_prototypes(home: Path, protos: list[tuple[Path, str]]) -> None:
    """The limit copied the very bytes goldfleet's volumes hold (read back, holes as zeroes)."""
    db = sqlite3.connect(f"file:{home / 'goldfleet.db'}?mode=ro", uri=True)
    try:
        uids = [uid for (uid,) in db.execute("SELECT uid FROM clones ORDER BY id LIMIT 3")]
    finally:
        db.close()
    for uid in uids:
        for src, name in protos:
            made = home / "store" / "clones" / uid / name
            if made.read_bytes() != src.read_bytes():
                raise BenchError(f"{made} does not hold the bytes of the limit's {src.name}")


def nonzero_runs(data: bytes) -> list[tuple[int, bytes]]:
    """Runs of 4 KiB pages that are not all zeroes, as (offset, bytes)."""
    page, zero, runs, start = 4096, bytes(4096), [], None
    for offset in range(0, len(data), page):
        if data[offset : offset + page] == zero[: len(data) - offset]:
            if start is not None:
                runs.append((start, data[start:offset]))
                start = None
        elif start is None:
            start = offset
    if start is not None:
        runs.append((start, data[start:]))
    return runs


def _copy_durably(src: Path, dest: Path) -> None:
    """Copy in the kernel (no user-space buffer), then fsync the copy."""
    fin = os.open(src, os.O_RDONLY)
    try:
        fout = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            left = os.fstat(fin).st_size
            while left > 0:
                done = os.copy_file_range(fin, fout, left)
                if done == 0:
                    raise BenchError(f"{src} ended early")
                left -= done
            os.fsync(fout)
        finally:
            os.close(fout)
    finally:
        os.close(fin)


def _write_sparse(size: int, runs: list[tuple[int, bytes]], dest: Path) -> None:
    """Write only the non-zero pages (held in memory), the rest left as holes, then fsync."""
    fout = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fout, size)
        for offset, data in runs:
            os.pwrite(fout, data, offset)
        os.fsync(fout)
    finally:
        os.close(fout)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Limits:
    """The two bare loops, timed over the same clones in alternating chunks (so that a
    neighbour's load on a shared machine hits both alike): ``copy`` copies the prototype
    files, ``sparse`` writes only their non-zero pages from memory, as goldfleet does."""

    root: Path
    protos: list[tuple[Path, str]]
    copy_s: float = 0.0
    sparse_s: float = 0.0
    copy_cpu_s: float = 0.0
    made: int = 0
    chunk: int = 50
    held: list[tuple[int, list[tuple[int, bytes]], str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir()
        (self.root / "copy").mkdir()
        (self.root / "sparse").mkdir()
        _fsync_dir(self.root)
        for src, name in self.protos:
            data = src.read_bytes()
            self.held.append((len(data), nonzero_runs(data), name))

    def run(self, n: int) -> None:
        """n more clones with each loop."""
        for first in range(self.made, self.made + n, self.chunk):
            count = min(self.chunk, self.made + n - first)
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            for i in range(first, first + count):
                folder = self.root / "copy" / f"c{i:05d}"
                folder.mkdir()
                for src, name in self.protos:
                    _copy_durably(src, folder / name)
                _fsync_dir(folder)
            t1 = time.perf_counter()
            self.copy_cpu_s += time.process_time() - cpu0
            for i in range(first, first + count):
                folder = self.root / "sparse" / f"c{i:05d}"
                folder.mkdir()
                for size, runs, name in self.held:
                    _write_sparse(size, runs, folder / name)
                _fsync_dir(folder)
            t2 = time.perf_counter()
            self.copy_s += t1 - t0
            self.sparse_s += t2 - t1
        self.made += n

    def check(self) -> None:
        for kind in ("copy", "sparse"):
            made = sum(1 for _ in (self.root / kind).iterdir())
            if made != self.made:
                raise BenchError(f"the {kind} limit loop made {made} folders, not {self.made}")
        sample = self.root / "sparse" / "c00000"
        for src, name in self.protos:
            if (sample / name).read_bytes() != src.read_bytes():
                raise BenchError(f"the sparse limit loop wrote {name} wrongly")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process's own threads (children not included)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def measure_create(
    home: Path, env: dict[str, str], n: int, layer: Path, work: Path, pid: int, say: Say
) -> dict[str, Any]:
    """Clone creation through the CLI, bracketed by the limit loops: half of their clones
    before the create, half after."""
    protos = make_prototypes(work / "prototypes", layer)
    sizes = ", ".join(f"{name} {src.stat().st_size:,} B" for src, name in protos)
    limits = Limits(home.parent / "limit", protos)
    limits.run(n // 2)
    say(f"limit loops, first half: {n // 2} clones each")
    cpu0 = cpu_seconds(pid)
    say(f"clone create {TEMPLATE} --count {n} (the CLI as a process) …")
    create_s, op = time_create(env, n)
    cpu_s = cpu_seconds(pid) - cpu0
    say(f"created {n} linked clones in {create_s:.3f} s (operation {op['id']})")
    limits.run(n - n // 2)
    say(f"limit loops, second half: {n - n // 2} clones each")
    check_created(home, op["id"], n, layer)
    say(f"checked: {n} ready rows, {n} sim VMs, {3 * n} volume files, system on {layer.name[:19]}…")
    check_prototypes(home, protos)
    limits.check()
    say(
        f"limit: {n} folders of 3 copies ({sizes}) + 4 fsyncs each in {limits.copy_s:.3f} s;"
        f" writing only the non-zero pages instead: {limits.sparse_s:.3f} s"
    )
    create_ms = 1000 * create_s / n
    limit_ms = 1000 * limits.copy_s / n
    sparse_ms = 1000 * limits.sparse_s / n
    return {
        "create_ms_per_clone": round(create_ms, 3),
        "limit_ms_per_clone": round(limit_ms, 3),
        "create_ratio": round(create_ms / limit_ms, 3),
        "sparse_limit_ms_per_clone": round(sparse_ms, 3),
        "create_sparse_ratio": round(create_ms / sparse_ms, 3),
        "create_cpu_ms_per_clone": round(1000 * cpu_s / n, 3),
        "limit_cpu_ms_per_clone": round(1000 * limits.copy_cpu_s / n, 3),
        "create_s": round(create_s, 3),
    }


# --- the other figures, from the benchmarks of their areas ----------------------------------


_LOADED: dict[str, ModuleType | None] = {}


def load_bench(name: str) -> ModuleType | None:
    """bench/<name>.py as a module (loaded once), or None when this branch does not have it."""
    if name in _LOADED:
        return _LOADED[name]
    path = BENCH_DIR / f"{name}.py"
    module = None
    spec = importlib.util.spec_from_file_location(f"goldfleet_bench_{name}", path)
    if path.is_file() and spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    _LOADED[name] = module
    return module


def optional(
    name: str,
    keys: tuple[str, ...],
    measure: Callable[[ModuleType], dict[str, Any]],
    say: Say,
) -> tuple[dict[str, Any], dict[str, Any] | None, str | None]:
    """One measurement by another area's benchmark: its figures for ``keys``, everything it
    returned, and a note when it gave nothing (module missing, other functions, failed)."""
    module = load_bench(name)
    if module is None:
        return dict.fromkeys(keys), None, f"bench/{name}.py is not in this branch"
    try:
        out = measure(module)
    except (AttributeError, TypeError) as exc:
        note = f"bench/{name}.py has not the functions scale.py calls ({exc})"
        return dict.fromkeys(keys), None, note
    except Exception as exc:  # its own BenchError: the other figures still count
        return dict.fromkeys(keys), None, f"bench/{name}.py failed: {exc}"
    missing = [k for k in keys if k not in out]
    if missing:
        say(f"bench/{name}.py gave no {', '.join(missing)}")
    return {k: out.get(k) for k in keys}, out, None


# --- CLI start-up ---------------------------------------------------------------------------


def measure_startup(cli: ModuleType, home: Path, pycache: Path, say: Say) -> dict[str, Any]:
    """``cli_overhead_ms`` as the issue means it: ``goldfleet --help`` and ``goldfleet clone
    list --json`` on an idle server (bench/cli.py's own, with 3 clones), less a bare ``import
    httpx``. Against this run's server the list prints the whole fleet, so its time is mostly
    the listing (``list_s``): that figure is kept too, as ``cli_overhead_fleet_ms``, and not
    called start-up."""
    fleet = cli.measure_cli(cli.cli_env(home, pycache))
    say(
        f"  against the {TEMPLATE} fleet: import httpx {fleet['baseline_ms']:.1f} ms, --help"
        f" {fleet['help_ms']:.1f} ms, clone list --json {fleet['list_ms']:.1f} ms"
    )
    small = cli.run(cli.REAL_CLONES, 15, 1, say)
    return {
        **small,
        "cli_overhead_ms": small["cli_overhead_ms"],
        "cli_overhead_fleet_ms": fleet["cli_overhead_ms"],
        "fleet": fleet,
    }


# --- the run --------------------------------------------------------------------------------


def run(n: int, work: Path, say: Say, skip: set[str]) -> dict[str, Any]:
    """The whole run in ``work``, which the caller removes (after printing: removing 10,000
    clones' files and the limit loops' takes minutes on a busy disk)."""
    home = work / "home"
    log = work / "server.log"
    proc: subprocess.Popen[bytes] | None = None
    client: Client | None = None
    notes: dict[str, str] = {}
    result: dict[str, Any] = {"clones": n}
    try:
        port = free_port()
        say(f"goldfleet scale benchmark: {n} linked clones on the sim driver; work dir {work}")
        proc = start_server(home, port, log)
        client = Client(f"http://127.0.0.1:{port}", (home / "admin.token").read_text().strip())
        say(f"server pid {proc.pid} on 127.0.0.1:{port}")
        layer = import_template(client, work, home / "store")
        say(f"imported template {TEMPLATE}: system 64M, temp {TEMP_SIZE}, data {DATA_SIZE}")
        env = cli_env(home)

        result |= measure_create(home, env, n, layer, work, proc.pid, say)
        result["peak_rss_create_mb"] = round(peak_rss_mb(proc.pid), 1)

        pycache = work / "pycache"  # the CLI's bytecode, kept as an installed package's is
        (work / "serve").mkdir()
        measures: list[tuple[str, str, tuple[str, ...], Callable[[ModuleType], dict[str, Any]]]] = [
            ("cli", "list", ("list_s",), lambda m: m.measure_list(m.cli_env(home, pycache), n)),
            (
                "cli",
                "cli",
                ("cli_overhead_ms", "cli_overhead_fleet_ms"),
                lambda m: measure_startup(m, home, pycache, say),
            ),
            (
                "verify",
                "verify",
                ("verify_s", "verify_limit_s", "verify_ratio"),
                lambda m: m.measure_verify(home, say=say),
            ),
            (
                "serve",
                "serve",
                ("serve_ratio",),
                lambda m: m.run(
                    work / "serve",
                    layer_mib=SERVE_LAYER_MIB,
                    repeats=3,
                    concurrency=8,
                    cold=False,
                    say=say,
                ),
            ),
        ]
        details: dict[str, Any] = {}
        for module, what, keys, measure in measures:
            if module in skip:
                result |= dict.fromkeys(keys)
                notes[keys[0]] = f"skipped (--skip {module})"
                continue
            say(f"{what}: bench/{module}.py …")
            figures, detail, note = optional(module, keys, measure, say)
            result |= figures
            if detail is not None:
                details[what] = detail
            if note:
                notes[keys[0]] = note
                say(f"{', '.join(keys)}: null ({note})")
        if proc.poll() is not None:
            raise BenchError(f"server exited with {proc.returncode}: {log_tail(log)}")
        result["peak_rss_mb"] = round(peak_rss_mb(proc.pid), 1)
        result["notes"] = notes
        result["details"] = details
        return result
    except ClientError as exc:
        raise BenchError(f"API error ({exc.status}): {exc.message}\n{log_tail(log)}") from exc
    finally:
        if client is not None:
            client.close()
        if proc is not None:
            stop_server(proc)


def summary(r: dict[str, Any]) -> str:
    def verdict(ok: bool | None) -> str:
        return "-" if ok is None else ("PASS" if ok else "MISS")

    def fig(value: Any, fmt: str) -> str:
        return "null" if value is None else format(value, fmt)

    def within(value: Any, limit: Any) -> bool | None:
        return None if value is None or limit is None else value <= limit

    n = r["clones"]
    rows = [
        ("clone create, ms/clone", fig(r["create_ms_per_clone"], ".3f"),
         fig(r["limit_ms_per_clone"], ".3f"), fig(r["create_ratio"], ".3f"), "<= 1.5",
         verdict(within(r["create_ratio"], CREATE_RATIO_TARGET))),
        ("  vs sparse writes", "", fig(r["sparse_limit_ms_per_clone"], ".3f"),
         fig(r["create_sparse_ratio"], ".3f"), "", ""),
        ("  CPU, ms/clone", fig(r["create_cpu_ms_per_clone"], ".3f"),
         fig(r["limit_cpu_ms_per_clone"], ".3f"), "", "", ""),
        ("store verify, s", fig(r["verify_s"], ".3f"), fig(r["verify_limit_s"], ".3f"),
         fig(r["verify_ratio"], ".3f"), "<= limit", verdict(within(r["verify_s"],
         r["verify_limit_s"]))),
        ("clone list --json, s", fig(r["list_s"], ".3f"), "1", "", "< 1 s",
         verdict(None if r["list_s"] is None else r["list_s"] < 1.0)),
        ("CLI start-up, ms", fig(r["cli_overhead_ms"], ".1f"), "150", "", "<= 150 ms",
         verdict(within(r["cli_overhead_ms"], 150.0))),
        ("  listing the fleet", fig(r.get("cli_overhead_fleet_ms"), ".1f"), "", "", "", ""),
        ("serve many/alone", fig(r["serve_ratio"], ".3f"), "", "", ">= 0.8",
         verdict(None if r["serve_ratio"] is None else r["serve_ratio"] >= 0.8)),
        ("server peak RSS, MB", fig(r["peak_rss_mb"], ".1f"), "400", "", "< 400 MB",
         verdict(r["peak_rss_mb"] < RSS_TARGET_MB)),
    ]  # fmt: skip
    lines = ["", f"{n} clones", f"{'':24}{'goldfleet':>11}{'limit':>9}{'ratio':>8}  {'target'}"]
    for label, value, limit, ratio, target, ok in rows:
        lines.append(f"{label:24}{value:>11}{limit:>9}{ratio:>8}  {target:<11}{ok}".rstrip())
    for key, note in r.get("notes", {}).items():
        lines.append(f"{key}: null — {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clones", type=int, default=10_000, help="clones (default 10000)")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON line")
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated optional measurements to leave out: cli, verify, serve",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.clones <= 10_000:
        parser.error("--clones must be between 1 and 10000")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if unknown := skip - {"cli", "verify", "serve"}:
        parser.error(f"--skip: unknown {', '.join(sorted(unknown))}; use cli, verify, serve")
    if shutil.which("qemu-img") is None:
        print("bench failed: qemu-img is not installed (Debian qemu-utils)", file=sys.stderr)
        return 2

    def say(text: str) -> None:
        if not args.json_only:
            print(text, flush=True)

    work = Path(tempfile.mkdtemp(prefix="goldfleet-bench-scale-"))
    try:
        try:
            result = run(args.clones, work, say, skip)
        except (BenchError, OSError, subprocess.SubprocessError) as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 1
        say(summary(result))
        print(json.dumps(result), flush=True)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
