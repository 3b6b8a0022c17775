"""A real OpenSSH server on loopback for the ssh host agent's tests (docs/hosts.md "The ssh
agent"): its own host key and client key in a temporary folder, key-only, no PAM; started once
per module that imports the ``sshd`` fixture (mark such a module ``xdist_group("sshd")``)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from goldfleet.drivers.agents import SshAgent

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(".pub").read_text().strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Sshd:
    dir: Path
    port: int
    key: Path  # the client's private key, authorized on the server
    host_pub: str  # the server's host key, "ssh-ed25519 AAAA…"
    user: str

    def known_hosts(self, *names: str, pub: str | None = None) -> Path:
        tag = "-".join(names) or "none"
        path = self.dir / f"known_hosts-{tag}{'-other' if pub else ''}"
        path.write_text("".join(f"{n} {pub or self.host_pub}\n" for n in names))
        return path

    def agent(self, host: str, root: Path | str | None, **kw: object) -> SshAgent:
        args: dict = {
            "address": "127.0.0.1",
            "user": self.user,
            "port": self.port,
            "key": self.key,
            "known_hosts": kw.get("known_hosts") or self.known_hosts(host),
            "root": None if root is None else str(root),
            "connect_timeout": 5,
            "timeout": 30,
        }
        return SshAgent(host, **{**args, **kw})


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    d = tmp_path_factory.mktemp("sshd")
    host_pub = keygen(d / "host_ed25519").split()
    client_pub = keygen(d / "client_ed25519")
    (d / "authorized_keys").write_text(client_pub + "\n")
    port = free_port()
    config = d / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {d / 'host_ed25519'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\nX11Forwarding no\n"
        "AllowTcpForwarding no\nPrintMotd no\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # its privilege-separation folder
    log = (d / "sshd.log").open("wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (d / "sshd.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "sshd did not listen"
                time.sleep(0.1)
        user = pwd.getpwuid(os.geteuid()).pw_name
        yield Sshd(d, port, d / "client_ed25519", " ".join(host_pub[:2]), user)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
