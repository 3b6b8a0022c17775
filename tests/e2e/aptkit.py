"""A real apt repository for the host-update tests: ``.deb``s built with ``dpkg-deb``, a
``Packages`` index and a ``Release`` over it, ``InRelease`` clearsigned by a GnuPG key made in a
throwaway GNUPGHOME, all served over HTTP on loopback; host roots whose packages are installed
with the real ``dpkg --root``; a forward proxy on loopback that asks for a password."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from goldfleet.cli.client import Client


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


@dataclass
class Key:
    """A signing key in its own GNUPGHOME (a short path: gpg-agent's socket lives there)."""

    home: Path
    fingerprint: str
    public: Path  # armored public key file

    @classmethod
    def make(cls, name: str, where: Path) -> Key:
        home = Path(tempfile.mkdtemp(prefix="gfk-", dir="/tmp"))
        os.chmod(home, 0o700)
        env = {**os.environ, "GNUPGHOME": str(home)}
        _run(
            [
                "gpg",
                "--batch",
                "--passphrase",
                "",
                "--quick-generate-key",
                f"{name} <{name}@repo.test>",
                "ed25519",
                "sign",
                "never",
            ],
            env=env,
        )
        listing = _run(["gpg", "--batch", "--with-colons", "--list-keys"], env=env).stdout.decode()
        fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        public = where / f"{name}.asc"
        public.write_bytes(_run(["gpg", "--batch", "--armor", "--export", fpr], env=env).stdout)
        return cls(home, fpr, public)

    def clearsign(self, text: Path, out: Path) -> None:
        env = {**os.environ, "GNUPGHOME": str(self.home)}
        out.unlink(missing_ok=True)
        _run(
            [
                "gpg",
                "--batch",
                "--yes",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "--local-user",
                self.fingerprint,
                "--clearsign",
                "--output",
                str(out),
                str(text),
            ],
            env=env,
        )

    def close(self) -> None:
        subprocess.run(
            ["gpgconf", "--kill", "gpg-agent"],
            env={**os.environ, "GNUPGHOME": str(self.home)},
            check=False,
            capture_output=True,
        )
        shutil.rmtree(self.home, ignore_errors=True)


def build_deb(
    where: Path, package: str, version: str, *, arch: str = "amd64", extra: str = ""
) -> Path:
    """A real .deb made by dpkg-deb, with one file and the control fields given."""
    tree = where / f"build-{package}-{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    doc = tree / "usr" / "share" / "doc" / package
    doc.mkdir(parents=True)
    (doc / "VERSION").write_text(f"{package} {version}\n")
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: {arch}\n"
        f"Maintainer: Test <test@repo.test>\nDescription: {package} for the tests\n{extra}"
    )
    out = where / f"{package}_{version.split(':', 1)[-1]}_{arch}.deb"  # as dpkg-name: no epoch
    _run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(tree), str(out)])
    shutil.rmtree(tree)
    return out


@dataclass
class Repo:
    """``root/dists/SUITE/{InRelease,Release,main/binary-ARCH/Packages[.gz]}`` and
    ``root/pool/main/*.deb``."""

    root: Path
    key: Key
    suite: str = "bookworm"
    arch: str = "amd64"
    debs: list[Path] = field(default_factory=list)

    @property
    def dists(self) -> Path:
        return self.root / "dists" / self.suite

    def add(self, deb: Path) -> Path:
        pool = self.root / "pool" / "main"
        pool.mkdir(parents=True, exist_ok=True)
        target = pool / deb.name
        shutil.copy(deb, target)
        self.debs.append(target)
        return target

    def publish(self, *, sign_with: Key | None = None, signed: bool = True) -> None:
        stanzas = []
        for deb in self.debs:
            control = _run(["dpkg-deb", "-f", str(deb)]).stdout.decode().rstrip("\n")
            data = deb.read_bytes()
            stanzas.append(
                f"{control}\nFilename: {deb.relative_to(self.root)}\nSize: {len(data)}\n"
                f"SHA256: {hashlib.sha256(data).hexdigest()}\n"
            )
        binary = self.dists / "main" / f"binary-{self.arch}"
        binary.mkdir(parents=True, exist_ok=True)
        packages = "\n".join(stanzas).encode()
        (binary / "Packages").write_bytes(packages)
        (binary / "Packages.gz").write_bytes(gzip.compress(packages))
        lines = []
        for name in ("Packages", "Packages.gz"):
            data = (binary / name).read_bytes()
            lines.append(
                f" {hashlib.sha256(data).hexdigest()} {len(data)} main/binary-{self.arch}/{name}"
            )
        release = self.dists / "Release"
        release.write_text(
            f"Origin: goldfleet-tests\nSuite: {self.suite}\nCodename: {self.suite}\n"
            f"Architectures: {self.arch}\nComponents: main\nSHA256:\n" + "\n".join(lines) + "\n"
        )
        inrelease = self.dists / "InRelease"
        if signed:
            (sign_with or self.key).clearsign(release, inrelease)
        else:
            shutil.copy(release, inrelease)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serve(root: Path) -> Iterator[str]:
    """An HTTP server for ``root`` on a loopback port; yields its URL."""
    handler = lambda *a, **kw: _Quiet(*a, directory=str(root), **kw)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@dataclass
class Proxy:
    url: str
    requests: list[str]  # the URLs it relayed
    refused: list[str]  # the Proxy-Authorization values it refused


@contextmanager
def proxy(username: str, password: str) -> Iterator[Proxy]:
    """A forward HTTP proxy on loopback that relays GETs (to loopback only) when the request
    carries Basic credentials ``username:password``, else answers 407."""
    expected = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    state = Proxy("", [], [])

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            given = self.headers.get("Proxy-Authorization", "")
            if given != expected:
                state.refused.append(given)
                self.send_response(407)
                self.send_header("Proxy-Authenticate", 'Basic realm="test"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            assert self.path.startswith("http://127.0.0.1:"), self.path
            state.requests.append(self.path)
            try:
                with urllib.request.urlopen(self.path, timeout=30) as r:
                    body = r.read()
                    code = r.status
            except urllib.error.HTTPError as exc:
                body, code = b"", exc.code
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def host_root(roots: Path, host: str, debs: list[Path], *, kernel: str | None = None) -> Path:
    """A host's root folder with ``debs`` installed by the real dpkg (``dpkg --root``)."""
    root = roots / host
    dpkg = root / "var" / "lib" / "dpkg"
    for sub in ("info", "updates", "triggers"):
        (dpkg / sub).mkdir(parents=True, exist_ok=True)
    (dpkg / "status").touch()
    if debs:
        _run(
            [
                "dpkg",
                f"--root={root}",
                "--force-not-root",
                "--force-script-chrootless",
                "--log=/dev/null",
                "-i",
                *map(str, debs),
            ]
        )
    if kernel is not None:
        (root / "var" / "lib" / "goldfleet").mkdir(parents=True, exist_ok=True)
        (root / "var" / "lib" / "goldfleet" / "booted-kernel").write_text(kernel + "\n")
    return root


def installed(root: Path) -> dict[str, str]:
    """What dpkg itself says is installed in ``root``."""
    out = _run(
        ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Package} ${Version}\n"]
    ).stdout.decode()
    return dict(line.split(" ", 1) for line in out.splitlines() if line)


# --- the world of the cluster tests: a repository, hosts at older versions, a server --------

OLD = {
    "libvirt-daemon": ("9.0.0-4", "Source: libvirt\n"),
    "libvirt-clients": ("9.0.0-4", "Source: libvirt\n"),
    "linux-image-6.1.0-18-amd64": ("6.1.76-1", "Source: linux-signed-amd64\n"),
    "qemu-system-x86": ("1:7.2+dfsg-7", "Source: qemu\n"),
    "livepatch-6.1.0-18-amd64": ("0.1", ""),
    "hello": ("1.0", ""),
}
NEW = {
    "libvirt-daemon": ("9.0.0-4+deb12u1", "Source: libvirt\n"),
    "libvirt-clients": ("9.0.0-4+deb12u1", "Source: libvirt\n"),
    "linux-image-6.1.0-18-amd64": ("6.1.90-1", "Source: linux-signed-amd64\n"),
    "qemu-system-x86": ("1:7.2+dfsg-7+deb12u6", "Source: qemu\n"),
    "livepatch-6.1.0-18-amd64": ("1.0", ""),
    "hello": ("1.0", ""),  # the same version: not an update
    "newpkg": ("1.0", ""),  # no host has it: not an update (upgrade, not install)
}
UPDATED = sorted(set(NEW) - {"hello", "newpkg"})


@dataclass
class World:
    home: Path
    tmp: Path
    roots: Path
    repo: Repo
    url: str
    key: Key
    other: Key
    old: dict[str, Path]
    new: dict[str, Path]
    server: object

    @property
    def client(self) -> Client:
        return self.server.client()  # type: ignore[attr-defined]

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k not in ("GOLDFLEET_URL", "GOLDFLEET_TOKEN")}
        return subprocess.run(
            [sys.executable, "-m", "goldfleet", *args],
            env={**env, "GOLDFLEET_HOME": str(self.home), "COLUMNS": "250"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def ok(self, *args: str) -> str:
        proc = self.cli(*args)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def ok_json(self, *args: str) -> dict:
        return json.loads(self.ok(*args, "--json"))

    def refused(self, *args: str) -> str:
        proc = self.cli(*args)
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        return " ".join(proc.stderr.split())

    def cache(self, coordinator: str = "h1") -> dict[str, str]:
        folder = self.home / "store" / "host-updates" / "pve" / coordinator
        if not folder.is_dir():
            return {}
        return {
            p.name.split("_", 1)[1]: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.iterdir()
        }

    def expected_hash(self) -> str:
        lines = sorted(
            f"{pkg} {NEW[pkg][0]} {hashlib.sha256(self.new[pkg].read_bytes()).hexdigest()}\n"
            for pkg in UPDATED
        )
        return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()

    def channel(self, kind: str = "normal", key: Key | None = None) -> str:
        return self.ok(
            "cluster", "channel", "pve", kind, "--url", self.url, "--suite", "bookworm",
            "--components", "main", "--key", str((key or self.key).public),
        )  # fmt: skip


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """The keys and .debs, made once for the module (the tests change neither)."""
    where = tmp_path_factory.mktemp("apt")
    key = Key.make("channel", where)
    other = Key.make("intruder", where)
    debs = where / "debs"
    debs.mkdir()
    old = {p: build_deb(debs, p, v, extra=x) for p, (v, x) in OLD.items()}
    new = {p: build_deb(debs, p, v, extra=x) for p, (v, x) in NEW.items() if p != "hello"}
    new["hello"] = old["hello"]
    try:
        yield key, other, old, new
    finally:
        key.close()
        other.close()


@pytest.fixture
def world(tmp_path: Path, home: Path, server, material: tuple) -> Iterator[World]:
    key, other, old, new = material
    repo = Repo(tmp_path / "repo", key)
    for deb in new.values():
        repo.add(deb)
    repo.publish()
    roots = tmp_path / "roots"
    # h1, the coordinator: everything old, booted from the kernel its live patch fixes
    host_root(roots, "h1", list(old.values()), kernel="6.1.0-18-amd64")
    # h2: old libvirt and kernel, booted from an older kernel (the live patch does not apply)
    host_root(
        roots,
        "h2",
        [
            old[p]
            for p in ("libvirt-daemon", "linux-image-6.1.0-18-amd64", "livepatch-6.1.0-18-amd64")
        ],
        kernel="6.1.0-17-amd64",
    )
    # h3: already up to date
    host_root(roots, "h3", [new["libvirt-daemon"], old["hello"]])
    server.env["GOLDFLEET_SIM_HOSTS"] = '["h1", "h2", "h3", "h4"]'
    server.env["GOLDFLEET_HOST_ROOTS"] = str(roots)
    server.restart()
    with serve(repo.root) as url:
        yield World(home, tmp_path, roots, repo, url, key, other, old, new, server)
