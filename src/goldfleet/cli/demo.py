"""``goldfleet demo``: the main job end to end, on a temporary home with a real server process.

It builds a small disk image itself, imports it as a template, makes linked and full clones,
writes distinct data into every data volume and scribbles on every system volume, patches the
template in maintenance mode, recreates the linked clones, and then proves by reading through
qemu (qemu-io) that every linked clone shows the patch and none of its scribble, that every
data volume still holds its own bytes, and that the full clones are unchanged. A second server,
a linked site, pulls v1 from it over HTTP and then only v2's new layer.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from goldfleet.cli.client import Client, ClientError
from goldfleet.store.qemu import QemuImg

MiB = 1 << 20
BASE_BYTE = 0x11  # the template's original content at every checked offset
SCRIBBLE_AT, SCRIBBLE_BYTE = 1 * MiB, 0x5C  # a user's change to a system volume
PATCH_AT, PATCH_BYTE = 2 * MiB, 0x77  # the admin's update in maintenance
PROBE = 4096

console = Console()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, port: int, role: str = "hq") -> subprocess.Popen:
    env = {**os.environ, "GOLDFLEET_HOME": str(home), "GOLDFLEET_ROLE": role}
    proc = subprocess.Popen(
        [sys.executable, "-m", "goldfleet", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    client = Client(f"http://127.0.0.1:{port}", None)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            client.get("/health")
            return proc
        except ClientError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start in 30 s")


def make_image(path: Path) -> None:
    """A 64 MiB raw disk holding 16 MiB of "installed system" from 8 MiB on (random bytes),
    whose checked regions hold BASE_BYTE."""
    with path.open("wb") as f:
        f.truncate(64 * MiB)
        f.seek(8 * MiB)
        f.write(os.urandom(16 * MiB))
        for offset in (0, SCRIBBLE_AT, PATCH_AT):
            f.seek(offset)
            f.write(bytes([BASE_BYTE]) * PROBE)


def data_for(name: str) -> bytes:
    return (f"data of {name} ".encode() * 512)[:PROBE]


def run_demo(*, keep: bool = False, linked: int = 20, full: int = 2) -> int:
    timings: dict[str, float] = {}
    t_start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="goldfleet-demo-"))
    home = work / "home"
    qemu = QemuImg()
    proc = site_proc = None
    failures: list[str] = []
    try:
        port = free_port()
        console.print(f"[bold]goldfleet demo[/bold] — home {home}, server on 127.0.0.1:{port}")
        t = time.monotonic()
        proc = start_server(home, port)
        token = (home / "admin.token").read_text().strip()
        client = Client(f"http://127.0.0.1:{port}", token)
        timings["start server"] = time.monotonic() - t

        t = time.monotonic()
        image = work / "desktop.raw"
        make_image(image)
        client.upload(
            "/templates/import",
            image,
            {"name": "desktop", "format": "raw", "temp": ["1G"], "data": ["2G"]},
        )
        timings["import template"] = time.monotonic() - t
        console.print("imported template desktop (v1): system 64M, temp 1G, data 2G")

        t = time.monotonic()
        site_port = free_port()
        site_proc = start_server(work / "site", site_port, role="site")
        site = Client(
            f"http://127.0.0.1:{site_port}", (work / "site" / "admin.token").read_text().strip()
        )
        joined = client.post("/sites", {"name": "branch"})
        client.post("/sites/branch/templates", {"template": "desktop"})
        site.post("/site/join", {"url": f"http://127.0.0.1:{port}", "token": joined["token"]})
        first = site.post("/site/sync", {})
        timings["site branch: join, pull v1"] = time.monotonic() - t
        if first["versions_added"] != {"desktop": [1]} or first["failed"]:
            failures.append(f"the site's first sync did not add v1: {first}")
        console.print(
            f"site branch (a second server) joined and pulled v1: {first['layers_downloaded']}"
            f" layer, {first['bytes_downloaded'] / MiB:.1f} MiB over HTTP, verified"
        )

        t = time.monotonic()
        for count, is_full in ((linked, False), (full, True)):
            r = client.post(
                "/clones", {"template": "desktop", "count": count, "full": is_full, "wait": True}
            )
            if r["operation"]["status"] != "done":
                raise RuntimeError(f"clone create failed: {r['operation']}")
        timings[f"create {linked} linked + {full} full clones"] = time.monotonic() - t
        clones = {
            c["name"]: c
            for c in (client.get(f"/clones/{c['name']}") for c in client.get("/clones"))
        }
        console.print(f"created {len(clones)} clones")

        t = time.monotonic()
        for name, c in clones.items():
            vols = {(v["role"], v["index"]): Path(v["path"]) for v in c["volumes"]}
            qemu.write(vols[("data", 0)], 0, data_for(name), scratch=work / "scratch")
            qemu.write_pattern(vols[("system", 0)], SCRIBBLE_AT, PROBE, SCRIBBLE_BYTE)
        timings["write user data and scribbles"] = time.monotonic() - t

        t = time.monotonic()
        m = client.post("/templates/desktop/maintenance/enter")
        qemu.write_pattern(Path(m["overlay_path"]), PATCH_AT, PROBE, PATCH_BYTE)
        r = client.post("/templates/desktop/maintenance/exit", {"recreate": "linked"})
        op = r["operation"]
        while op["status"] == "running":
            time.sleep(0.05)
            op = client.get(f"/operations/{op['id']}")
        timings["maintenance, exit, recreate linked"] = time.monotonic() - t
        if op["status"] != "done":
            failures.append(f"recreate operation ended {op['status']}: {op.get('error')}")
        console.print(f"patched template desktop → v{r['version']}; recreated {op['done']} clones")

        t = time.monotonic()
        delta = site.post("/site/sync", {})
        timings["site branch: pull v2"] = time.monotonic() - t
        state = client.get("/sites")[0]["states"].get("desktop:v2", {})
        if delta["versions_added"] != {"desktop": [2]} or delta["layers_downloaded"] != 1:
            failures.append(f"the site's second sync did not add only v2's layer: {delta}")
        elif not (state.get("state") == "verified" and state.get("current")):
            failures.append(f"HQ does not see v2 verified and current at the site: {state}")
        console.print(
            f"site branch pulled v2 as its new layer only: {delta['bytes_downloaded'] / MiB:.2f}"
            f" MiB ({delta['bytes_downloaded'] / max(first['bytes_downloaded'], 1):.1%} of v1);"
            " HQ sees it verified and current there"
        )

        t = time.monotonic()
        table = Table(title="what each clone shows, read through qemu")
        for col in ("clone", "kind", "version", "patch", "scribble", "data", "ok"):
            table.add_column(col)
        for name in clones:
            c = client.get(f"/clones/{name}")
            vols = {(v["role"], v["index"]): Path(v["path"]) for v in c["volumes"]}
            system = vols[("system", 0)]
            patch = qemu.read(system, PATCH_AT, PROBE)
            scribble = qemu.read(system, SCRIBBLE_AT, PROBE)
            data = qemu.read(vols[("data", 0)], 0, PROBE)
            has_patch = patch == bytes([PATCH_BYTE]) * PROBE
            has_scribble = scribble == bytes([SCRIBBLE_BYTE]) * PROBE
            data_ok = data == data_for(name)
            if c["kind"] == "linked":
                ok = has_patch and not has_scribble and c["version"] == 2
                ok = ok and scribble == bytes([BASE_BYTE]) * PROBE
            else:
                ok = not has_patch and has_scribble and c["version"] == 1
            ok = ok and data_ok
            if not ok:
                failures.append(f"clone {name} does not show what it should")
            table.add_row(
                name,
                c["kind"],
                f"v{c['version']}",
                "yes" if has_patch else "no",
                "kept" if has_scribble else "gone",
                "intact" if data_ok else "CHANGED",
                "[green]ok[/green]" if ok else "[red]FAIL[/red]",
            )
        timings["verify through qemu-io"] = time.monotonic() - t
        console.print(table)
        report = client.post("/store/verify")
        if report["problems"]:
            failures.append(f"store verify found {len(report['problems'])} problems")
        console.print(
            f"store verify: {report['layers']} layers, {len(report['problems'])} problems"
        )
    except (ClientError, RuntimeError, OSError) as exc:
        failures.append(str(getattr(exc, "message", exc)))
    finally:
        for running in (site_proc, proc):
            if running is not None:
                running.terminate()
                try:
                    running.wait(10)
                except subprocess.TimeoutExpired:
                    running.kill()
        if keep:
            console.print(f"kept the demo home at {home}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    timings["total"] = time.monotonic() - t_start
    tt = Table(title="timings")
    tt.add_column("step")
    tt.add_column("seconds", justify="right")
    for step, secs in timings.items():
        tt.add_row(step, f"{secs:.2f}")
    console.print(tt)
    if failures:
        for f in failures:
            console.print(f"[red]FAIL[/red] {f}")
        return 1
    console.print(
        "[green]all checks passed[/green]: linked clones show the patch, user data is intact,"
        " full clones are unchanged, the site pulled only the new layer"
    )
    return 0
