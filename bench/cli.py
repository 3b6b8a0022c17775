"""Benchmark: the CLI's start-up, and ``clone list`` over a large fleet (issue 10, part 2).

A real server process (SQLite, sim driver) runs on a temporary home, and the real CLI
(``python -m goldfleet``, the interpreter running this script) is timed as a subprocess:

- ``cli_overhead_ms``: the median of ``--runs`` runs each of ``goldfleet --help`` and
  ``goldfleet clone list --json`` (the server idle, 3 clones) minus the median of
  ``python -c 'import httpx'`` (the floor of any httpx client), the larger of the two.
  The commands are run in turns, so a noisy neighbour hits all three alike.
  Target: <= 150 ms.
- ``list_s``: the wall time, from process start to exit, of ``goldfleet clone list --json``
  printing every one of ``--clones`` clones (default 10,000; median of ``--list-runs``), checked
  to hold every clone. Target: < 1 s.

Bytecode is cached for every command alike in a folder of the run (see ``cli_env``), as for an
installed package; ``--cold-bytecode`` keeps this environment's setting instead.

The first 3 clones are made through the API (real volumes through qemu-img). The rest are
inserted as rows in this process, on the same template version: making 10,000 clones through
qemu-img takes minutes, and listing reads only rows. They are ``ready`` and ``stopped`` (so the
server's power reconciliation leaves them alone), spread over the sim hosts, one in 20
``failed``, like a fleet that has lived a while.

The run exits 0 whether or not a target is met; it exits non-zero only when the run itself
fails. The last line printed is one line of JSON with the figures. ``measure_cli`` and
``measure_list`` take the environment of a CLI pointed at any server, for bench/scale.py.

    .venv/bin/python bench/cli.py [--clones 10000] [--runs 15] [--list-runs 3] [--json-only]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from goldfleet.cli.client import Client, ClientError

MiB = 1 << 20
TEMPLATE = "bench"
REAL_CLONES = 3
OVERHEAD_TARGET_MS = 150.0
LIST_TARGET_S = 1.0
SIM_HOSTS = ("sim-host-1", "sim-host-2")


class BenchError(Exception):
    """The run itself failed (not a missed target)."""


# --- the server ---------------------------------------------------------------------------


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
    env["GOLDFLEET_SIM_HOSTS"] = json.dumps(list(SIM_HOSTS))
    return env


def cli_env(home: Path, pycache: Path | None = None) -> dict[str, str]:
    """What an admin's shell has: the home, which names the server and holds the token.

    With ``pycache``, compiled bytecode is kept there (``PYTHONPYCACHEPREFIX``), even when the
    caller's environment says ``PYTHONDONTWRITEBYTECODE``: an installed package is byte-compiled
    once, while an editable install under that setting compiles goldfleet's modules on every
    run, which is not what users wait for."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOLDFLEET_")}
    env["GOLDFLEET_HOME"] = str(home)
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
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


# --- the fleet ----------------------------------------------------------------------------


def import_template(client: Client, work: Path) -> None:
    """A 16 MiB raw disk with one written region, one 64M temp and one 64M data volume."""
    image = work / "system.raw"
    with image.open("wb") as f:
        f.truncate(16 * MiB)
        f.seek(MiB)
        f.write(b"\x11" * 4096)
    client.upload(
        "/templates/import",
        image,
        {"name": TEMPLATE, "format": "raw", "temp": ["64M"], "data": ["64M"]},
    )
    image.unlink()


def create_real_clones(client: Client, n: int) -> list[str]:
    r = client.post("/clones", {"template": TEMPLATE, "count": n, "wait": True})
    if r["operation"]["status"] != "done" or len(r["clones"]) != n:
        raise BenchError(f"creating {n} clones through the API ended: {r['operation']}")
    return r["clones"]


def insert_clones(home: Path, n: int, prefix: str = "fleet") -> None:
    """``n`` clone rows on the template's current version, in one transaction, in this
    process (the server keeps running: SQLite in WAL mode lets it read meanwhile)."""
    if n <= 0:
        return
    from sqlalchemy import insert, select

    from goldfleet.db.engine import make_engine
    from goldfleet.db.tables import Clone, Template

    engine = make_engine(f"sqlite:///{home / 'goldfleet.db'}")
    try:
        with engine.begin() as conn:
            template_id, version_id = conn.execute(
                select(Template.id, Template.current_version_id).where(Template.name == TEMPLATE)
            ).one()
            rows: list[dict[str, Any]] = []
            for i in range(n):
                failed = i % 20 == 19
                rows.append(
                    {
                        "name": f"{prefix}-{i:05d}",
                        "uid": secrets.token_hex(16),
                        "template_id": template_id,
                        "version_id": version_id,
                        "kind": "linked",
                        "status": "failed" if failed else "ready",
                        "power": "stopped",
                        "action": "recreate" if failed else None,
                        "target_version_id": version_id if failed else None,
                        "error": "bench: a simulated failure" if failed else None,
                        "host": SIM_HOSTS[i % len(SIM_HOSTS)],
                    }
                )
            conn.execute(insert(Clone), rows)
    finally:
        engine.dispose()


# --- measuring ----------------------------------------------------------------------------


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Seconds from spawning ``argv`` until it exited, the CPU seconds it used (user and
    system), and its stdout; a failure is an error."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv[1:])} exited {proc.returncode}: {proc.stderr[-2000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return elapsed, cpu, proc.stdout


GOLDFLEET = [sys.executable, "-m", "goldfleet"]
COMMANDS: dict[str, list[str]] = {
    "baseline": [sys.executable, "-c", "import httpx"],
    "help": [*GOLDFLEET, "--help"],
    "list": [*GOLDFLEET, "clone", "list", "--json"],
}


def measure_cli(env: dict[str, str], runs: int = 15) -> dict[str, float]:
    """Median start-up of ``goldfleet --help`` and ``goldfleet clone list --json`` against the
    server ``env`` points at, and ``cli_overhead_ms``: the larger of the two less the median
    of a bare ``import httpx``. One warm-up round first (bytecode caches, page cache).

    The same from the CPU time the processes used (``…_cpu_ms``): on a machine shared with
    busy neighbours, wall times stretch with the queue for a core, CPU times far less."""
    wall: dict[str, list[float]] = {key: [] for key in COMMANDS}
    cpu: dict[str, list[float]] = {key: [] for key in COMMANDS}
    for round_ in range(runs + 1):
        for key, argv in COMMANDS.items():
            elapsed, used, _ = run_once(argv, env)
            if round_:
                wall[key].append(elapsed * 1000)
                cpu[key].append(used * 1000)
    figures: dict[str, float] = {}
    for suffix, samples in (("ms", wall), ("cpu_ms", cpu)):
        medians = {key: statistics.median(values) for key, values in samples.items()}
        overhead = max(medians["help"], medians["list"]) - medians["baseline"]
        figures |= {f"{key}_{suffix}": round(value, 1) for key, value in medians.items()}
        figures[f"cli_overhead_{suffix}"] = round(overhead, 1)
    return figures


def measure_list(env: dict[str, str], expected: int, runs: int = 3) -> dict[str, float | int]:
    """Median wall time of ``goldfleet clone list --json`` (process start to exit) against the
    server ``env`` points at, each run checked to print ``expected`` distinct clones."""
    times = []
    for _ in range(runs):
        elapsed, _, stdout = run_once(COMMANDS["list"], env)
        names = {c["name"] for c in json.loads(stdout)}
        if len(names) != expected:
            raise BenchError(f"clone list --json printed {len(names)} clones, not {expected}")
        times.append(elapsed)
    return {
        "list_s": round(statistics.median(times), 3),
        "list_max_s": round(max(times), 3),
        "listed": expected,
    }


# --- the run ------------------------------------------------------------------------------


def run(
    n: int, runs: int, list_runs: int, say: Callable[[str], None], *, cold: bool = False
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="goldfleet-bench-cli-"))
    home = work / "home"
    log = work / "server.log"
    proc: subprocess.Popen[bytes] | None = None
    client: Client | None = None
    try:
        port = free_port()
        say(f"goldfleet CLI benchmark: start-up, and clone list over {n} clones; work dir {work}")
        proc = start_server(home, port, log)
        client = Client(f"http://127.0.0.1:{port}", (home / "admin.token").read_text().strip())
        say(f"server pid {proc.pid} on 127.0.0.1:{port}")
        import_template(client, work)
        real = min(REAL_CLONES, n)
        create_real_clones(client, real)
        env = cli_env(home, None if cold else work / "pycache")

        say(f"start-up: {runs} runs each, in turns, with {real} clones on an idle server")
        cli = measure_cli(env, runs)
        say(
            f"  import httpx {cli['baseline_ms']:.1f} ms, --help {cli['help_ms']:.1f} ms,"
            f" clone list --json {cli['list_ms']:.1f} ms (CPU: {cli['baseline_cpu_ms']:.1f},"
            f" {cli['help_cpu_ms']:.1f}, {cli['list_cpu_ms']:.1f} ms)"
        )

        t0 = time.perf_counter()
        insert_clones(home, n - real)
        say(f"{n - real} clone rows inserted in {time.perf_counter() - t0:.2f} s ({n} in all)")
        listed = measure_list(env, n, list_runs)
        say(f"clone list --json over {n} clones: {listed['list_s']:.3f} s (median)")
        if proc.poll() is not None:
            raise BenchError(f"server exited with {proc.returncode}: {log_tail(log)}")
        load = os.getloadavg()[0]
        say(f"load average (1 min) {load:.2f} on {os.cpu_count()} cores")
        return {
            **cli,
            **listed,
            "clones": n,
            "runs": runs,
            "bytecode_cache": not cold,
            "load_avg": round(load, 2),
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


def summary(r: dict[str, Any]) -> str:
    def verdict(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    overhead_ok = r["cli_overhead_ms"] <= OVERHEAD_TARGET_MS
    list_ok = r["list_s"] < LIST_TARGET_S
    return "\n".join(
        [
            "",
            f"{'':34}{'median ms':>10}{'CPU ms':>10}",
            f"{'python -c import httpx':34}{r['baseline_ms']:>10.1f}{r['baseline_cpu_ms']:>10.1f}",
            f"{'goldfleet --help':34}{r['help_ms']:>10.1f}{r['help_cpu_ms']:>10.1f}",
            f"{'goldfleet clone list --json':34}{r['list_ms']:>10.1f}{r['list_cpu_ms']:>10.1f}",
            "",
            f"cli overhead   {r['cli_overhead_ms']:.1f} ms   target <= {OVERHEAD_TARGET_MS:.0f} ms"
            f"   {verdict(overhead_ok)}   (CPU {r['cli_overhead_cpu_ms']:.1f} ms)",
            f"list {r['clones']:>6}    {r['list_s']:.3f} s    target < {LIST_TARGET_S:.0f} s"
            f"   {verdict(list_ok)}",
            f"load average   {r['load_avg']:.2f} (1 min, at the end)",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clones", type=int, default=10_000, help="clones listed (10000)")
    parser.add_argument("--runs", type=int, default=15, help="start-up runs per command (15)")
    parser.add_argument("--list-runs", type=int, default=3, help="runs of the big list (3)")
    parser.add_argument(
        "--cold-bytecode",
        action="store_true",
        help="keep this environment's bytecode settings (default: a cache of its own)",
    )
    parser.add_argument("--json-only", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    if not 1 <= args.clones <= 100_000:
        parser.error("--clones must be between 1 and 100000")
    if args.runs < 1 or args.list_runs < 1:
        parser.error("--runs and --list-runs must be at least 1")
    if shutil.which("qemu-img") is None:
        print("bench failed: qemu-img is not installed (Debian qemu-utils)", file=sys.stderr)
        return 2

    def say(text: str) -> None:
        if not args.json_only:
            print(text, flush=True)

    try:
        result = run(args.clones, args.runs, args.list_runs, say, cold=args.cold_bytecode)
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    say(summary(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
