"""A real apt repository for the host-update tests: ``.deb``s built with ``dpkg-deb``, a
``Packages`` index and a ``Release`` over it, ``InRelease`` clearsigned by a GnuPG key made in a
throwaway GNUPGHOME, all served over HTTP on loopback; host roots whose packages are installed
with the real ``dpkg --root``; a forward proxy on loopback that asks for a password."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import os
import shutil
import subprocess
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


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
