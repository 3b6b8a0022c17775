"""goldfleet on a real PostgreSQL: migrations, a full round, and two servers sharing a rollout.

The tests start their own PostgreSQL (Debian's ``postgresql`` package: ``initdb`` and
``postgres`` from ``/usr/lib/postgresql/<version>/bin``) on loopback, in a temporary folder, as
a non-root user when run as root. Every test gets a fresh database on it. Servers are real
``goldfleet serve`` processes with their own homes; those that share a database share one store
folder too (``GOLDFLEET_STORE_DIR``), as docs/operations.md asks.

A database that several servers share holds one admin token: the first home's ``goldfleet
init`` makes it and writes it to that home's ``admin.token``; later homes find it there already
and write none, so every client here uses the first home's token.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from inflight import HeldUpload, call_in_thread, held_checks

from goldfleet.cli.client import Client
from goldfleet.store.qemu import QemuImg


def _root_conftest():  # type: ignore[no-untyped-def]
    """tests/conftest.py (``import conftest`` here finds tests/e2e/conftest.py instead)."""
    path = Path(__file__).parents[1] / "conftest.py"
    spec = importlib.util.spec_from_file_location("goldfleet_tests_root_conftest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_root = _root_conftest()
Server, free_port, make_raw = _root.Server, _root.free_port, _root.make_raw
# one worker runs the whole module under `make test` (pytest-xdist): one PostgreSQL cluster
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("postgres")]

MiB = 1 << 20
VOLUME_FILES = ("system.qcow2", "temp0.qcow2", "data0.qcow2")
PG_USER = "goldfleet"  # the database role the servers log in as (trust auth on loopback)


# --- a PostgreSQL of the tests' own --------------------------------------------------------


def _pg_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` that holds initdb and postgres."""

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name))

    found = [
        p
        for p in Path("/usr/lib/postgresql").glob("*/bin")
        if (p / "initdb").is_file() and (p / "postgres").is_file()
    ]
    return max(found, key=version) if found else None


def _install_postgresql() -> str | None:
    """Install Debian's postgresql when missing (as ``make system-packages`` does); returns why
    it could not be, or None."""
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine to install Debian's postgresql"
    prefix = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if prefix is None:
        return "not root and no sudo: cannot install Debian's postgresql"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*prefix, "apt-get", "install", "-y", "-qq", "postgresql"]
    try:
        if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode != 0:
            subprocess.run([*prefix, "apt-get", "update", "-qq"], capture_output=True, timeout=600)
            proc = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                return f"apt-get install postgresql failed: {proc.stderr.strip()[-500:]}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"apt-get install postgresql failed: {exc}"
    return None if _pg_bin() else "postgresql installed but no initdb under /usr/lib/postgresql"


def _run_as() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: then run it as ``postgres`` (made if missing)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam("postgres")


@dataclass
class Postgres:
    """One running PostgreSQL cluster on 127.0.0.1:``port``."""

    port: int
    proc: subprocess.Popen
    log: Path
    count: int = 0

    def url(self, dbname: str, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{PG_USER}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.url(dbname, "postgresql"), autocommit=True, connect_timeout=5)

    def new_database(self) -> str:
        self.count += 1
        name = f"goldfleet_{os.getpid()}_{self.count}"
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """initdb into a temporary folder and run ``postgres`` on loopback for the whole session."""
    if _pg_bin() is None:
        why = _install_postgresql()
        if why is not None:
            print(f"\nSKIP PostgreSQL tests: {why}")
            pytest.skip(f"PostgreSQL binaries cannot be installed: {why}")
    bindir = _pg_bin()
    assert bindir is not None
    user = _run_as()
    # not under pytest's tmp folder: that one is private to root, the postgres user can't enter
    base = Path(tempfile.mkdtemp(prefix="goldfleet-pg-"))
    data, sockets, log = base / "data", base / "sockets", base / "postgres.log"
    sockets.mkdir()
    log.touch()
    as_user: dict = {}
    if user is not None:
        for p in (base, sockets, log):
            os.chown(p, user.pw_uid, user.pw_gid)
        as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["HOME"] = str(base)
    proc = None
    try:
        init = subprocess.run(
            [
                *(bindir / "initdb", "-D", data, "-U", PG_USER, "-A", "trust", "-E", "UTF8"),
                *("--no-sync", "--no-instructions"),
            ],
            cwd=base,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            **as_user,
        )
        assert init.returncode == 0, f"initdb failed: {init.stdout}{init.stderr}"
        port = free_port()
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [
                    *(bindir / "postgres", "-D", data, "-k", sockets, "-p", str(port)),
                    *("-h", "127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200"),
                ],
                cwd=base,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                **as_user,
            )
        pg = Postgres(port=port, proc=proc, log=log)
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"postgres exited: {log.read_text()[-2000:]}"
            try:
                pg.connect().close()
                break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, f"postgres not up: {log.read_text()[-2000:]}"
                time.sleep(0.1)
        yield pg
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown: ends the sessions, then stops
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def database(postgres: Postgres) -> str:
    """A fresh, empty database; its SQLAlchemy URL."""
    return postgres.url(postgres.new_database())


# --- servers sharing that database ---------------------------------------------------------


@dataclass
class Shared:
    """Servers sharing one database and one store; rows read straight from PostgreSQL."""

    postgres: Postgres
    url: str
    store: Path
    tmp: Path
    servers: list[Server]

    def rows(self, sql: str, *params: object) -> list[tuple]:
        dbname = self.url.rsplit("/", 1)[1]
        with self.postgres.connect(dbname) as conn:
            return conn.execute(sql, params).fetchall()

    def server(self, name: str, **env: str) -> Server:
        home = self.tmp / name
        home.mkdir()
        srv = Server(
            home=home,
            env={"GOLDFLEET_DATABASE_URL": self.url, "GOLDFLEET_STORE_DIR": str(self.store), **env},
        )
        self.servers.append(srv)
        srv.start()
        return srv

    def client(self, srv: Server) -> Client:
        """A client of ``srv`` with the one admin token of the shared database."""
        return Client(srv.url, self.servers[0].token)

    def wait(self, client: Client, op_id: int, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            op = client.get(f"/operations/{op_id}")
            if op["status"] not in ("running", "scheduled"):
                return op
            assert time.monotonic() < deadline, f"operation {op_id} still running: {op}"
            time.sleep(0.05)

    def clone_folders(self) -> set[str]:
        return {p.name for p in (self.store / "clones").iterdir() if p.is_dir()}

    def work_files(self) -> list[Path]:
        return [*(self.store / "clones").rglob("*.new"), *(self.store / "layers").glob(".*")]


@pytest.fixture
def shared(postgres: Postgres, database: str, tmp_path: Path) -> Iterator[Shared]:
    sh = Shared(postgres, database, tmp_path / "store", tmp_path, [])
    yield sh
    for srv in sh.servers:
        srv.stop()


def _import(client: Client, tmp: Path) -> None:
    image = make_raw(tmp / "base.raw", fill={0: b"\x11" * 4096, MiB: b"\x11" * 4096})
    client.upload(
        "/templates/import",
        image,
        {"name": "base", "format": "raw", "temp": ["64M"], "data": ["64M"]},
    )


def _shows(qemu: QemuImg, path: Path, offset: int, byte: int) -> bool:
    return qemu.read(path, offset, 4096) == bytes([byte]) * 4096


def _backing(path: Path) -> str | None:
    out = subprocess.run(
        ["qemu-img", "info", "-f", "qcow2", "--output=json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out).get("backing-filename")


# --- tests ---------------------------------------------------------------------------------


def test_migrations_and_a_full_round_on_postgresql(shared, qemu):
    srv = shared.server("home-a")
    client = shared.client(srv)

    # the schema is Alembic's newest revision, in PostgreSQL
    ((revision,),) = shared.rows("SELECT version_num FROM alembic_version")
    assert revision
    tables = {
        t
        for (t,) in shared.rows(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
    }
    assert {"templates", "versions", "layers", "clones", "operations", "operation_items"} <= tables
    assert {"servers", "tokens", "audit", "sim_domains"} <= tables
    (server_row,) = shared.rows("SELECT pid FROM servers")
    assert server_row == (srv.proc.pid,)

    _import(client, shared.tmp)
    r = client.post("/clones", {"template": "base", "count": 3, "wait": True})
    assert r["operation"]["status"] == "done", r["operation"]
    names = sorted(r["clones"])
    solo = client.post("/clones", {"template": "base", "name": "solo", "full": True, "wait": True})
    assert solo["operation"]["status"] == "done"

    entered = client.post("/templates/base/maintenance/enter")
    overlay = Path(entered["overlay_path"])
    assert overlay.parent == shared.store / "layers"
    qemu.write_pattern(overlay, MiB, 4096, 0x22)
    r = client.post("/templates/base/maintenance/exit", {"recreate": "linked"})
    assert r["version"] == 2
    op = shared.wait(client, r["operation"]["id"])
    assert (op["status"], op["total"], op["done"], op["failed"]) == ("done", 3, 3, 0), op

    for name in names:
        c = client.get(f"/clones/{name}")
        assert (c["version"], c["status"]) == (2, "ready")
        system = Path(next(v["path"] for v in c["volumes"] if v["role"] == "system"))
        assert system.is_relative_to(shared.store)
        assert _shows(qemu, system, MiB, 0x22) and _shows(qemu, system, 0, 0x11)
    assert client.get("/clones/solo")["version"] == 1
    # the same facts, as rows of PostgreSQL
    rows = shared.rows(
        "SELECT c.name, v.number, c.status FROM clones c JOIN versions v ON v.id = c.version_id"
        " ORDER BY c.name"
    )
    assert rows == sorted([(n, 2, "ready") for n in names] + [("solo", 1, "ready")])
    assert shared.rows("SELECT state, COUNT(*) FROM operation_items GROUP BY state") == [
        ("done", 3 + 3 + 1)
    ]
    assert shared.work_files() == []
    assert client.post("/store/verify")["problems"] == []


@dataclass
class Pair:
    """Two servers on one database and store; template ``base`` and its linked clones."""

    a: Server
    b: Server
    ca: Client
    cb: Client
    ids: dict[int, str]  # pid → server id (the ``owner`` of operation items)
    names: list[str]

    def id(self, srv: Server) -> str:
        return self.ids[srv.proc.pid]


def _pair(shared: Shared, total: int, **env: str) -> Pair:
    a = shared.server("home-a", **env)
    b = shared.server("home-b", **env)
    ca, cb = shared.client(a), shared.client(b)
    servers = dict(shared.rows("SELECT id, pid FROM servers"))
    assert sorted(servers.values()) == sorted([a.proc.pid, b.proc.pid])
    _import(ca, shared.tmp)
    pair = Pair(a, b, ca, cb, {pid: sid for sid, pid in servers.items()}, [])
    if total:
        r = cb.post("/clones", {"template": "base", "count": total, "wait": False})
        created = shared.wait(ca, r["operation"]["id"])
        assert (created["status"], created["done"], created["failed"]) == ("done", total, 0)
        pair.names = sorted(r["clones"])
    return pair


def _new_version(pair: Pair, qemu: QemuImg) -> int:
    """Maintenance enter (through A), 0x22 at 1 MiB, exit with recreate linked (through B)."""
    overlay = Path(pair.ca.post("/templates/base/maintenance/enter")["overlay_path"])
    qemu.write_pattern(overlay, MiB, 4096, 0x22)
    r = pair.cb.post("/templates/base/maintenance/exit", {"recreate": "linked"})
    assert r["version"] == 2 and r["operation"]["total"] == len(pair.names), r
    return r["operation"]["id"]


def _items(shared: Shared, op_id: int, state: str | None = None) -> dict[str, int]:
    """owner → items of the operation (in ``state``, if given)."""
    sql = (
        "SELECT owner, COUNT(*) FROM operation_items WHERE operation_id = %s AND owner IS NOT NULL"
    )
    if state is None:
        return dict(shared.rows(sql + " GROUP BY owner", op_id))
    return dict(shared.rows(sql + " AND state = %s GROUP BY owner", op_id, state))


def test_two_servers_share_a_rollout_and_one_finishes_it_after_the_other_is_killed(shared, qemu):
    total = 60
    pair = _pair(
        shared,
        total,
        GOLDFLEET_SIM_PLAN='{"latency_ms": {"*": 20}}',
        GOLDFLEET_BATCH_SIZE="4",
        GOLDFLEET_LEASE_SECONDS="2",
    )

    # every clone gets its own bytes in its data volume, to compare after the rollout
    def data_path(name: str) -> Path:
        c = pair.ca.get(f"/clones/{name}")
        return Path(next(v["path"] for v in c["volumes"] if v["role"] == "data"))

    data = {n: data_path(n) for n in pair.names}
    for i, n in enumerate(pair.names):
        qemu.write_pattern(data[n], 2 * MiB, 4096, 1 + i)
    data_before = {n: data[n].read_bytes() for n in pair.names}

    op_id = _new_version(pair, qemu)

    # a quarter in, kill -9 whichever server holds clones under way
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    while True:
        op = pair.ca.get(f"/operations/{op_id}")
        assert op["status"] == "running", f"finished before the kill: {op}"
        running = _items(shared, op_id, "running")
        seen |= set(_items(shared, op_id))
        if op["done"] >= total // 4 and running:
            break
        assert time.monotonic() < deadline, f"no progress: {op}"
        time.sleep(0.005)
    assert op["done"] < total * 3 // 4, f"too far to kill mid-way: {op}"
    victim, survivor = (pair.a, pair.b) if pair.id(pair.a) in running else (pair.b, pair.a)
    victim.kill9()
    held = {
        cid
        for (cid,) in shared.rows(
            "SELECT clone_id FROM operation_items"
            " WHERE operation_id = %s AND state = 'running' AND owner = %s",
            op_id,
            pair.id(victim),
        )
    }
    assert held, "the killed server held no clone under way"

    client = pair.ca if survivor is pair.a else pair.cb
    op = shared.wait(client, op_id, timeout=120)
    assert (op["status"], op["total"], op["done"], op["failed"]) == ("done", total, total, 0), op

    # both servers claimed items; nothing is left running or queued; what the dead server held
    # (its lease ran out), the survivor finished
    seen |= set(_items(shared, op_id))
    assert seen == {pair.id(pair.a), pair.id(pair.b)}, seen
    states = dict(
        shared.rows(
            "SELECT state, COUNT(*) FROM operation_items WHERE operation_id = %s GROUP BY state",
            op_id,
        )
    )
    assert states == {"done": total}, states
    took_over = shared.rows(
        "SELECT DISTINCT owner FROM operation_items WHERE operation_id = %s AND clone_id = ANY(%s)",
        op_id,
        sorted(held),
    )
    assert took_over == [(pair.id(survivor),)], took_over

    # every linked clone on v2, ready, whole; data volumes byte-identical
    ((v2_id, v2_top),) = shared.rows("SELECT id, top_layer FROM versions WHERE number = 2")
    v2_file = shared.store.resolve() / "layers" / f"sha256-{v2_top.removeprefix('sha256:')}.qcow2"
    clones = shared.rows("SELECT name, uid, version_id, status, action, error FROM clones")
    assert len(clones) == total
    for name, uid, version_id, status, action, error in clones:
        assert (version_id, status, action, error) == (v2_id, "ready", None, None), name
        folder = shared.store / "clones" / uid
        assert sorted(p.name for p in folder.iterdir()) == sorted(VOLUME_FILES), name
        system = folder / "system.qcow2"
        backing = _backing(system)  # relative, to the v2 top layer in the shared store
        assert backing is not None and not backing.startswith("/"), (name, backing)
        assert (folder / backing).resolve() == v2_file, (name, backing)
        assert _shows(qemu, system, MiB, 0x22) and _shows(qemu, system, 0, 0x11), name
        assert data[name].read_bytes() == data_before[name], name
        check = subprocess.run(
            ["qemu-img", "check", "-q", "-f", "qcow2", str(system)], capture_output=True
        )
        assert check.returncode == 0, (name, check.stderr)
    assert shared.clone_folders() == {uid for _, uid, *_ in clones}
    assert shared.work_files() == []
    with contextlib.closing(client):
        assert client.post("/store/verify")["problems"] == []


def test_two_servers_build_clones_of_one_rollout_at_the_same_time(shared, qemu):
    total = 40
    pair = _pair(
        shared,
        total,
        GOLDFLEET_SIM_PLAN='{"latency_ms": {"*": 20}}',
        GOLDFLEET_BATCH_SIZE="4",
    )
    op_id = _new_version(pair, qemu)
    op = shared.wait(pair.ca, op_id)
    assert (op["status"], op["done"]) == ("done", total), op

    spans = shared.rows(
        "SELECT owner, started_at, finished_at FROM operation_items WHERE operation_id = %s",
        op_id,
    )
    a, b = pair.id(pair.a), pair.id(pair.b)
    done_by = {a: 0, b: 0}
    for owner, _, _ in spans:
        done_by[owner] += 1
    # a second server adds hands: each does a fair share, some of it while the other works
    assert min(done_by.values()) >= total // 5, done_by
    overlap = any(
        s1 < f2 and s2 < f1 for o1, s1, f1 in spans if o1 == a for o2, s2, f2 in spans if o2 == b
    )
    assert overlap, "the two servers never built clones at the same time"


def test_a_batch_longer_than_the_lease_is_not_taken_over_while_its_server_lives(shared, qemu):
    total = 8
    # 4 clones per batch, 2 at a time, 2 s per define: a batch takes ~4 s, the lease is 2 s
    pair = _pair(
        shared,
        0,
        GOLDFLEET_SIM_PLAN='{"latency_ms": {"define": 2000}}',
        GOLDFLEET_BATCH_SIZE="4",
        GOLDFLEET_LEASE_SECONDS="2",
    )
    r = pair.cb.post("/clones", {"template": "base", "count": total, "wait": False})
    op = shared.wait(pair.ca, r["operation"]["id"], timeout=120)
    assert (op["status"], op["total"], op["failed"]) == ("done", total, 0), op
    assert op["done"] == total, f"{op['done']} clones recorded done for {total} items"


def test_a_server_starting_on_a_shared_store_leaves_the_work_of_the_others_alone(shared):
    a = shared.server("home-a")
    client = shared.client(a)
    image = make_raw(shared.tmp / "base.raw", size=16 * MiB, fill={0: b"\x11" * 4096})
    half, go = threading.Event(), threading.Event()
    result: list[object] = []

    def body() -> Iterator[bytes]:
        with image.open("rb") as f:
            for i, block in enumerate(iter(lambda: f.read(MiB), b"")):
                if i == 8:
                    half.set()
                    go.wait(60)
                yield block

    def upload() -> None:
        try:
            result.append(
                client.request(
                    "POST",
                    "/templates/import",
                    params={"name": "base", "format": "raw", "temp": ["64M"], "data": ["64M"]},
                    content=body(),
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(image.stat().st_size),
                    },
                )
            )
        except Exception as exc:
            result.append(exc)

    uploader = threading.Thread(target=upload)
    uploader.start()
    try:
        assert half.wait(30)
        incoming = shared.store / "incoming"
        deadline = time.monotonic() + 30
        while not any(p.stat().st_size >= 4 * MiB for p in incoming.iterdir()):
            assert time.monotonic() < deadline, "the upload never reached the store"
            time.sleep(0.02)
        (receiving,) = list(incoming.iterdir())
        shared.server("home-b")  # another server joins the shared database and store
        kept = receiving.exists()
    finally:
        go.set()
        uploader.join(60)
    # the upload to A completes as if B had not started (now: 500, its file deleted by B)
    assert not isinstance(result[0], Exception), (result[0], f"upload file kept: {kept}")
    assert [v["name"] for v in client.get("/templates/base/versions")] == ["v1"]
    assert kept


# --- a server's work in flight when another starts, or when it dies ------------------------


def _until(check, what: str, timeout: float = 60):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def _in_flight_env(tmp: Path, **extra: str) -> tuple[dict[str, str], Path]:
    """Servers whose maintenance exits wait in their check while the hold file exists, that
    build one clone at a time, whose VM definitions take 1.5 s and VM shutdowns 25 s."""
    held_env, hold = held_checks(tmp)
    plan = {"latency_ms": {"define": 1500, "shutdown": 25000}}
    return {
        **held_env,
        "GOLDFLEET_SIM_PLAN": json.dumps(plan),
        "GOLDFLEET_WORKERS": "1",
        "GOLDFLEET_BATCH_SIZE": "2",
        **extra,
    }, hold


@dataclass
class InFlight:
    """One server's work under way, on templates and clones named after ``tag``."""

    tag: str
    upload: HeldUpload
    receiving: Path  # the upload's file in incoming/
    overlay: Path  # the overlay of TAG-base, whose exit is held in its check
    exiting: tuple[threading.Thread, list[object]]
    restoring: tuple[threading.Thread, list[object]]  # TAG-victim: in its 25 s shutdown
    op_id: int  # a bulk create of 8 TAG-desk clones, under way
    running: set[int]  # ids of the items under way when this was made


def _in_flight(shared: Shared, srv: Server, hold: Path, qemu: QemuImg, tag: str) -> InFlight:
    """Put work of every kind in flight on ``srv``: an upload half-way, a maintenance exit in
    its seal check, a single clone action in its driver call and an operation's items."""
    client = shared.client(srv)
    base, desk, victim = f"{tag}-base", f"{tag}-desk", f"{tag}-victim"
    for name in (base, desk):
        image = make_raw(shared.tmp / f"{name}.raw", fill={0: b"\x11" * 4096})
        client.upload("/templates/import", image, {"name": name, "format": "raw", "temp": ["64M"]})
    overlay = Path(client.post(f"/templates/{base}/maintenance/enter")["overlay_path"])
    qemu.write_pattern(overlay, MiB, 4096, 0x22)
    client.post("/clones", {"template": desk, "name": victim, "wait": True})
    client.post(f"/clones/{victim}/start")

    image = make_raw(shared.tmp / f"{tag}-fresh.raw", fill={0: b"\x33" * 4096})
    upload = HeldUpload(client, image, f"{tag}-fresh")
    receiving = upload.start(shared.store / "incoming")
    hold.touch()
    exiting = call_in_thread(client.post, f"/templates/{base}/maintenance/exit", {})
    _until(
        lambda: client.get(f"/templates/{base}")["status"] == "exiting-maintenance",
        f"the exit of {base} to be under way",
    )
    restoring = call_in_thread(client.post, f"/clones/{victim}/restore")
    _until(
        lambda: client.get(f"/clones/{victim}")["status"] == "rebuilding",
        f"the restore of {victim} to be under way",
    )
    op_id = client.post("/clones", {"template": desk, "count": 8})["operation"]["id"]
    running = _until(
        lambda: {
            i
            for (i,) in shared.rows(
                "SELECT id FROM operation_items WHERE operation_id = %s AND state = 'running'",
                op_id,
            )
        },
        f"clones of operation {op_id} to be under way",
    )
    return InFlight(tag, upload, receiving, overlay, exiting, restoring, op_id, running)


def _server_id(shared: Shared, srv: Server) -> str:
    ((sid,),) = shared.rows("SELECT id FROM servers WHERE pid = %s", srv.proc.pid)
    return sid


def test_a_server_restarted_within_its_lease_cleans_up_after_its_dead_self(shared, qemu):
    """Issue 10: the rows of a server's previous run looked like a live peer's until their
    lease ran out, so a restart within the lease skipped the cleanup and waited for its own
    operation. Its home's lock says that run is dead: the restart cleans up at once."""
    env, hold = _in_flight_env(shared.tmp, GOLDFLEET_LEASE_SECONDS="60")
    a = shared.server("home-a", **env)
    client = shared.client(a)
    work: InFlight | None = None
    try:
        work = _in_flight(shared, a, hold, qemu, "a")
        dead_id = _server_id(shared, a)
        a.kill9()
        hold.unlink()
        a.start()  # well within the 60 s lease of its previous run
        started = time.monotonic()

        # the previous run's row is gone: the restart is the home's only server
        assert shared.rows("SELECT pid FROM servers") == [(a.proc.pid,)]
        new_id = _server_id(shared, a)
        # its upload's file removed; its exit rolled back to maintenance, overlay kept; its
        # restore marked failed, for a retry
        assert not work.receiving.exists()
        assert sorted(t["name"] for t in client.get("/templates")) == ["a-base", "a-desk"]
        t = client.get("/templates/a-base")
        assert (t["status"], t["overlay_path"]) == ("maintenance", str(work.overlay)), t
        assert work.overlay.exists()
        victim = client.get("/clones/a-victim")
        assert victim["status"] == "failed", victim
        assert "goldfleet clone retry a-victim" in victim["error"]
        # its operation's items under way are taken over at once, not after 60 s
        op = shared.wait(client, work.op_id, timeout=40)
        assert time.monotonic() - started < 40
        assert (op["status"], op["total"], op["done"], op["failed"]) == ("done", 8, 8, 0), op
        owners = shared.rows(
            "SELECT DISTINCT owner FROM operation_items WHERE id = ANY(%s)", sorted(work.running)
        )
        assert owners == [(new_id,)] and new_id != dead_id
        assert [p for p in shared.work_files() if p != work.overlay] == []
    finally:
        hold.unlink(missing_ok=True)
        if work is not None:
            work.upload.go.set()


def _held(shared: Shared, op_id: int, server_id: str) -> set[int]:
    """The items of the operation that the server claimed (under way or finished by it)."""
    return {
        i
        for (i,) in shared.rows(
            "SELECT id FROM operation_items WHERE operation_id = %s AND owner = %s",
            op_id,
            server_id,
        )
    }


@pytest.mark.parametrize("starting", ["a-new-server", "the-dead-one-restarted"])
def test_a_starting_server_cleans_up_after_a_dead_server_and_leaves_a_live_ones_work(
    shared, qemu, starting
):
    """Server A is alive with work in flight; server X died with work in flight. A server then
    starts: a new one on its own home once X's lease has run out, or X itself again within its
    lease. It cleans up X's work (upload file, exit, restore, operation items) and leaves A's
    alone: A's import, exit, restore and operation complete; the items A held are finished by A
    (the starting server may share the items still queued: servers share operations)."""
    lease = "3" if starting == "a-new-server" else "60"
    env, hold = _in_flight_env(shared.tmp, GOLDFLEET_LEASE_SECONDS=lease)
    a = shared.server("home-a", **env)
    x = shared.server("home-x", **env)
    client = shared.client(a)
    works: list[InFlight] = []
    try:
        dead = _in_flight(shared, x, hold, qemu, "x")
        works.append(dead)
        x_id = _server_id(shared, x)
        x.kill9()
        killed = time.monotonic()
        if starting == "a-new-server":
            time.sleep(max(0.0, killed + 3.5 - time.monotonic()))
        live = _in_flight(shared, a, hold, qemu, "a")
        works.append(live)
        a_id = _server_id(shared, a)
        servers_before = set(shared.rows("SELECT id FROM servers"))
        held_by_a = _held(shared, live.op_id, a_id)
        assert held_by_a
        if starting == "a-new-server":
            s = shared.server("home-s", **env)
        else:
            x.start()
            s = x
        s_id = _server_id(shared, s)

        # rows: A's kept; X's kept too unless the starter is X again (its own dead run)
        rows = set(shared.rows("SELECT id FROM servers"))
        expected = servers_before | {(s_id,)}
        if s is x:
            expected -= {(x_id,)}
        assert rows == expected, (rows, expected)

        # X's work cleaned up: upload file gone, exit rolled back, restore failed for a retry
        assert not dead.receiving.exists()
        t = client.get("/templates/x-base")
        assert (t["status"], t["overlay_path"]) == ("maintenance", str(dead.overlay)), t
        x_victim = client.get("/clones/x-victim")
        assert x_victim["status"] == "failed", x_victim
        assert "goldfleet clone retry x-victim" in x_victim["error"]

        # A's work untouched: upload file, exit under way, restore under way, items A's
        assert live.receiving.exists()
        assert client.get("/templates/a-base")["status"] == "exiting-maintenance"
        assert client.get("/clones/a-victim")["status"] == "rebuilding"
        assert _held(shared, live.op_id, a_id) >= held_by_a

        # ... and it completes
        answer = live.upload.finish()
        assert not isinstance(answer, Exception), answer
        assert [v["name"] for v in client.get("/templates/a-fresh/versions")] == ["v1"]
        hold.unlink()
        thread, out = live.exiting
        thread.join(60)
        assert not isinstance(out[0], Exception), out[0]
        assert out[0]["version"] == 2
        thread, out = live.restoring
        thread.join(60)
        assert not isinstance(out[0], Exception), out[0]
        assert out[0]["status"] == "ready"
        op = shared.wait(client, live.op_id)
        assert (op["status"], op["done"], op["failed"]) == ("done", 8, 0), op
        assert _held(shared, live.op_id, a_id) >= held_by_a
        # X's operation is finished by the living (A after X's lease, or X's restart)
        op = shared.wait(client, dead.op_id)
        assert (op["status"], op["done"], op["failed"]) == ("done", 8, 0), op
        assert [p for p in shared.work_files() if p != dead.overlay] == []
    finally:
        hold.unlink(missing_ok=True)
        for work in works:
            work.upload.go.set()
