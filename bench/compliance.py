"""Benchmark: evaluate N running clones against a quarantine policy, then switch 500 of them.

What is timed
    In this process, on a temporary home with the ``sim`` driver (zero latency, SQLite), a
    template is imported for real (a small raw image) and N running clones of it are entered
    as rows: the clone rows, their simulated VMs and, inside each guest, the installed guest
    tool and a descriptor (a third of them below the policy's threshold). The clones' files
    play no part in an evaluation, which reads the guests through the driver, so they are not
    built. A policy is applied (its first evaluation, every clone new: ``first_s``). Then:

    - ``evaluate_s``: one ``compliance check`` of all N with nothing changed — read every
      guest's policy file, tool and descriptor (batched driver reads), judge each clone,
      compare with what is stored, store the pass (target <= 2 s for 5,000 clones);
    - ``switch``: 500 restricted guests move to the threshold version (their descriptor
      written inside the guest, as ``nq-set`` would), and one check releases them: filters
      switched, users told once. ``switch_ms_per_clone`` = (that check − ``evaluate_s``) / 500.

Baseline (same run)
    ``read_s``: the bare batched driver reads of the same three guest files for all N clones,
    with nothing judged or stored: the floor an evaluation cannot go under with this driver.
    ``evaluate_ratio`` = evaluate_s / read_s.

Peak RSS
    ``ru_maxrss`` of this process (the evaluation runs in the server's process the same way).

The last line is one JSON object with clones, evaluate_s, switch_ms_per_clone, peak_rss_mb
and the figures above. Exits 0 whether or not a target is met.

    .venv/bin/python bench/compliance.py [--clones 5000] [--switch 500]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import insert, select, update

from goldfleet import guest
from goldfleet.bootstrap import bootstrap
from goldfleet.db.tables import Clone, SimDomain, SimGuestFile, Template
from goldfleet.domain import quarantine as q
from goldfleet.home import init_home
from goldfleet.services import catalog, guests

POLICY = """\
threshold = "2026-10"
restricted_message = "Patch this desktop first."
[update_available_message]
enabled = true
text = "A newer patch level is available."
[restricted_access]
allow = ["10.0.0.5:443"]
[[versions]]
name = "2026-09"
[[versions]]
name = "2026-10"
[[versions]]
name = "2026-11"
"""


def build(ctx, n: int) -> list[str]:
    image = Path(ctx.settings.home) / "base.raw"
    image.write_bytes(b"\0" * (16 << 20))
    catalog.import_template(ctx, name="desk", image=image, fmt="raw", actor="bench")
    policy = q.parse_policy(POLICY)
    d_low, d_ok = policy.versions[0].descriptor, policy.versions[1].descriptor
    tool = guest.tool_path().read_bytes()
    names = [f"desk-{i:05d}" for i in range(n)]
    with ctx.session() as s:
        t = s.scalar(select(Template).where(Template.name == "desk"))
        assert t is not None and t.current_version_id is not None
        s.execute(
            insert(Clone),
            [
                {
                    "name": name,
                    "uid": uuid.uuid4().hex,
                    "template_id": t.id,
                    "version_id": t.current_version_id,
                    "kind": "linked",
                    "status": "ready",
                    "power": "running",
                    "host": "sim-host-1",
                }
                for name in names
            ],
        )
        s.execute(
            insert(SimDomain),
            [
                {"name": name, "host": "sim-host-1", "state": "running", "disks": {}}
                for name in names
            ],
        )
        files = []
        for i, name in enumerate(names):
            # a VM without disks keeps its guest's files under its name (drivers/sim.py)
            files.append({"disk": f"vm:{name}", "path": guest.GUEST_TOOL_PATH, "data": tool})
            descriptor = d_low if i % 3 == 0 else d_ok
            files.append(
                {
                    "disk": f"vm:{name}",
                    "path": guest.GUEST_DESCRIPTOR_PATH,
                    "data": descriptor.encode() + b"\n",
                }
            )
        s.execute(insert(SimGuestFile), files)
        s.commit()
    return names


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clones", type=int, default=5000)
    ap.add_argument("--switch", type=int, default=500)
    args = ap.parse_args()
    n, k = args.clones, args.switch
    with tempfile.TemporaryDirectory(prefix="gf-bench-compliance-") as work:
        home = Path(work) / "home"
        settings, _ = init_home(home)
        settings = settings.model_copy(update={"compliance_seconds": 0.0})
        ctx = bootstrap(settings)
        say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
        t0 = time.perf_counter()
        names = build(ctx, n)
        say(f"{n} running clones entered in {time.perf_counter() - t0:.1f} s")

        t0 = time.perf_counter()
        guests.apply_policy(ctx, "desk", POLICY, actor="bench")
        first_s = time.perf_counter() - t0
        say(f"policy applied, first evaluation (all new): {first_s:.2f} s")

        t0 = time.perf_counter()
        for path, limit in (
            (guest.GUEST_POLICY_PATH, 1 << 20),
            (guest.GUEST_TOOL_PATH, 4096),
            (guest.GUEST_DESCRIPTOR_PATH, 512),
        ):
            ctx.driver.guest_read_many(names=names, path=path, limit=limit)
        read_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        steady = guests.check(ctx)
        evaluate_s = time.perf_counter() - t0
        assert steady.changed == 0 and steady.clones == n, steady
        say(f"evaluation, nothing changed: {evaluate_s:.2f} s (bare reads {read_s:.2f} s)")

        policy = q.parse_policy(POLICY)
        restricted = [name for i, name in enumerate(names) if i % 3 == 0][:k]
        with ctx.session() as s:
            s.execute(
                update(SimGuestFile)
                .where(
                    SimGuestFile.disk.in_([f"vm:{name}" for name in restricted]),
                    SimGuestFile.path == guest.GUEST_DESCRIPTOR_PATH,
                )
                .values(data=policy.versions[1].descriptor.encode() + b"\n")
            )
            s.commit()
        t0 = time.perf_counter()
        moved = guests.check(ctx)
        switch_s = time.perf_counter() - t0
        assert moved.switched == len(restricted) == moved.changed, moved
        assert moved.messages == len(restricted), moved
        switch_ms = (switch_s - evaluate_s) * 1000 / max(len(restricted), 1)
        say(
            f"{len(restricted)} released: {switch_s:.2f} s"
            f" ({switch_ms:.2f} ms per switched clone above a steady evaluation)"
        )
        ctx.runner.shutdown()  # type: ignore[union-attr]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "clones": n,
        "evaluate_s": round(evaluate_s, 3),
        "evaluate_target_s": 2.0,
        "first_s": round(first_s, 3),
        "read_s": round(read_s, 3),
        "evaluate_ratio": round(evaluate_s / read_s, 2) if read_s else None,
        "switched": len(restricted),
        "switch_s": round(switch_s, 3),
        "switch_ms_per_clone": round(switch_ms, 3),
        "peak_rss_mb": round(peak, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
