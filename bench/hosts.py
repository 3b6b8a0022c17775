"""Benchmark: the rolling update of a cluster of hosts (issue 11, docs/host-updates.md).

8 sim hosts × 40 running VMs of 2 GiB each; each host's root is a folder whose packages the
real ``dpkg --root`` installed (``local-root`` agents), at an old kernel. A real apt repository
(``.deb``s from dpkg-deb, ``InRelease`` signed by a GnuPG key made here, served on loopback by
tests/e2e/aptkit.py) has the new kernel, whose guidance is ``reboot-host`` (recommended). The
cluster is synced and updated at level recommended; a sim host's reboot takes exactly
``--reboot`` seconds (``reboot_seconds`` of the sim plan). Each host is disabled, evacuated
(every VM live-migrated to hosts with room), patched (dpkg), rebooted, enabled, and its VMs
migrated back.

Host capacity is chosen so that ``K`` hosts may be out at once (the others hold every VM):
``--max-hosts`` is K. Figures:

- ``makespan_s``: from ``cluster update`` to done.
- ``bound_s``: the capacity bound, the least time to reboot every host with at most K out at
  once, ``ceil(n / K) · reboot``; ``makespan_ratio`` = makespan / bound. (The coordinator is
  admitted first and no other host applies packages before it; with K > 1 others start
  alongside it, so the bound needs no coordinator-alone wave.)
- ``overhead_ms_per_migration``: goldfleet's own time in the evacuate and migrate-back steps
  (summed over hosts), less the wall time while a driver call made for that host ran (the
  simulated hypervisor's work), per migration. ``driver_ms_per_migration``: that driver time.
- ``peak_rss_mb``: this process (server work in process: the update is driven by the same code
  the server's periodic pass runs).

The run exits 0 whether or not a target is met; the last line printed is JSON.

    .venv/bin/python bench/hosts.py [--hosts 8] [--vms 40] [--reboot 10] [--max-hosts K]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import aptkit  # noqa: E402

from goldfleet.bootstrap import bootstrap  # noqa: E402
from goldfleet.config import load_settings  # noqa: E402
from goldfleet.drivers.base import DomainSpec  # noqa: E402
from goldfleet.services import clusters  # noqa: E402
from goldfleet.services.clusters import _rolling  # noqa: E402

VM_MIB = 2048
OLD_KERNEL = ("linux-image-6.1.0-18-amd64", "6.1.76-1")
NEW_KERNEL = ("linux-image-6.1.0-18-amd64", "6.1.90-1")


def capacity_for(hosts: int, vms: int, out: int) -> int:
    """Memory per host (MiB) such that the ``hosts - out`` others hold every VM."""
    return math.ceil(hosts * vms / (hosts - out)) * VM_MIB


class Timed:
    """Wraps the driver: per host being updated, the wall time while at least one driver call
    made for it runs (its step's thread, or the threads its migrations run in: named after the
    host), while one of its measured steps runs; and the calls by method."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()
        self.on: dict[str, int] = {}  # host → measured steps running
        self.inside: dict[str, int] = {}
        self.since: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    @staticmethod
    def host_of_thread() -> str | None:
        name = threading.current_thread().name
        for prefix in ("goldfleet-host-", "goldfleet-migrate-"):
            if name.startswith(prefix):
                return name[len(prefix) :].split("_")[0]
        return None

    def wrap(self, name: str) -> None:
        fn = getattr(self.driver, name)

        def timed(**kw: Any) -> Any:
            host = self.host_of_thread()
            with self.lock:
                self.calls[name] = self.calls.get(name, 0) + 1
                if host is not None:
                    if self.inside.get(host, 0) == 0:
                        self.since[host] = time.perf_counter()
                    self.inside[host] = self.inside.get(host, 0) + 1
            try:
                return fn(**kw)
            finally:
                if host is not None:
                    with self.lock:
                        self.inside[host] -= 1
                        if self.inside[host] == 0 and self.on.get(host):
                            elapsed = time.perf_counter() - self.since[host]
                            self.seconds[host] = self.seconds.get(host, 0.0) + elapsed

        setattr(self.driver, name, timed)


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="gf-hosts-"))
    key = None
    try:
        home = work / "home"
        home.mkdir()
        os.environ["GOLDFLEET_HOME"] = str(home)
        hosts = [f"h{i + 1}" for i in range(args.hosts)]
        # the repository and the host roots (real dpkg)
        key = aptkit.Key.make("bench", work)
        debs = work / "debs"
        debs.mkdir()
        old = aptkit.build_deb(debs, OLD_KERNEL[0], OLD_KERNEL[1])
        new = aptkit.build_deb(debs, NEW_KERNEL[0], NEW_KERNEL[1])
        repo = aptkit.Repo(work / "repo", key)
        repo.add(new)
        repo.publish()
        roots = work / "roots"
        for h in hosts:
            aptkit.host_root(roots, h, [old])
        settings = load_settings(
            home=home,
            driver="sim",
            sim_hosts=hosts,
            sim_plan=json.dumps({"reboot_seconds": args.reboot}),
            host_roots=roots,
        )
        ctx = bootstrap(settings)
        for i in range(args.hosts * args.vms):
            host = hosts[i % args.hosts]
            name = f"vm{i:04d}"
            ctx.driver.define(spec=DomainSpec(name=name, disks=(), memory_mib=VM_MIB), host=host)
            ctx.driver.start(name=name)
        k = args.max_hosts
        mem = capacity_for(args.hosts, args.vms, k)
        clusters.create_cluster(
            ctx, "bench", hosts, hosts[0], memory_mib=mem, vcpus=1 << 12, actor="bench"
        )
        with aptkit.serve(repo.root) as url:
            clusters.set_channel(
                ctx,
                "bench",
                "normal",
                url=url,
                suite="bookworm",
                components=["main"],
                key=key.public.read_bytes(),
                actor="bench",
            )
            digest = clusters.sync(ctx, "bench", actor="bench").hash
        timed = Timed(ctx.driver)
        for name in ("migrate", "host_of", "state", "vms_on", "start", "reboot_host", "host_up"):
            timed.wrap(name)
        steps: dict[str, float] = {}
        for step in ("evacuate", "migrate-back"):
            fn = _rolling.STEPS[step]

            def measured(u: Any, h: str, fn: Any = fn, step: str = step) -> bool:
                with timed.lock:
                    timed.on[h] = timed.on.get(h, 0) + 1
                t = time.perf_counter()
                try:
                    return fn(u, h)
                finally:
                    with timed.lock:
                        steps[step] = steps.get(step, 0.0) + time.perf_counter() - t
                        timed.on[h] -= 1

            _rolling.STEPS[step] = measured
        _rolling._wake = lambda ctx: None  # driven here, in this thread: the server's own pass
        t0 = time.perf_counter()
        clusters.start_update(
            ctx,
            "bench",
            requested_hash=digest,
            level="recommended",
            max_hosts=k,
            ha_disabled=True,
            actor="bench",
        )
        _rolling._drive_all(ctx)  # what the runner's periodic pass starts in its thread
        v = clusters.update_status(ctx, "bench")
        makespan = time.perf_counter() - t0
        if v.status != "done":
            raise SystemExit(f"the update ended {v.status}: {v.reason}")
        migrations = timed.calls.get("migrate", 0)
        states = ctx.driver.states()
        assert set(states.values()) == {"running"}, "a VM was left stopped"
        for h in hosts:
            assert aptkit.installed(roots / h)[NEW_KERNEL[0]] == NEW_KERNEL[1]
        driver_s = sum(timed.seconds.values())
        own = sum(steps.values()) - driver_s
        n = args.hosts
        bound = math.ceil(n / k) * args.reboot
        return {
            "hosts": n,
            "vms": n * args.vms,
            "max_hosts": k,
            "reboot_s": args.reboot,
            "host_memory_mib": mem,
            "makespan_s": round(makespan, 3),
            "bound_s": round(bound, 3),
            "makespan_ratio": round(makespan / bound, 3),
            "migrations": migrations,
            "overhead_ms_per_migration": round(own * 1000 / max(1, migrations), 3),
            "driver_ms_per_migration": round(driver_s * 1000 / max(1, migrations), 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
    finally:
        if key is not None:
            key.close()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hosts", type=int, default=8)
    p.add_argument("--vms", type=int, default=40, help="VMs per host")
    p.add_argument("--reboot", type=float, default=10.0, help="seconds a host reboot takes")
    p.add_argument(
        "--max-hosts", type=int, default=3, help="hosts out at once (capacity is sized for it)"
    )
    args = p.parse_args()
    r = run(args)
    print(
        f"{r['hosts']} hosts × {r['vms'] // r['hosts']} VMs, {r['max_hosts']} at once,"
        f" reboot {r['reboot_s']} s: makespan {r['makespan_s']} s; capacity bound"
        f" {r['bound_s']} s (ratio {r['makespan_ratio']});"
        f" {r['migrations']} migrations, goldfleet's overhead"
        f" {r['overhead_ms_per_migration']} ms each (the sim's own {r['driver_ms_per_migration']}"
        f" ms); peak RSS {r['peak_rss_mb']} MB"
    )
    print(json.dumps(r))
    os._exit(0)  # the update's thread and the runner-less context hold nothing to flush


if __name__ == "__main__":
    main()
