"""OpenPGP with GnuPG's own tools: a channel's key is imported once into a throwaway home
(its fingerprint read, exported as a binary keyring kept with the channel), and every
``InRelease`` is checked with ``gpgv`` against that keyring alone."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from goldfleet.errors import InvalidInput, StoreError

MAX_KEY = 1 << 20
TIMEOUT = 60


class BadSignature(InvalidInput):
    """A repository's index is unsigned, or not signed by the channel's key."""

    status_code = 502


def _run(
    cmd: list[str], *, data: bytes = b"", home: str | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "LC_ALL": "C"}
    if home is not None:
        env["GNUPGHOME"] = home
    try:
        return subprocess.run(
            cmd, input=data, capture_output=True, timeout=TIMEOUT, check=False, env=env
        )
    except FileNotFoundError:
        raise StoreError(
            f"{cmd[0]} is not installed: install Debian's gnupg (make setup does)"
        ) from None


def import_key(key: bytes) -> tuple[str, bytes]:
    """An OpenPGP public key (armored or binary) → its fingerprint and a binary keyring of
    it. Refused: no key, several primary keys, secret keys."""
    if not key or len(key) > MAX_KEY:
        raise InvalidInput(f"the channel key is empty or larger than {MAX_KEY} bytes")
    with tempfile.TemporaryDirectory(prefix="goldfleet-gpg-") as home:
        os.chmod(home, 0o700)
        base = ["gpg", "--batch", "--no-tty", "--quiet", "--no-autostart"]
        r = _run([*base, "--import"], data=key, home=home)
        if r.returncode != 0:
            words = r.stderr.decode(errors="replace").strip().splitlines()
            raise InvalidInput(
                "the channel key is not an OpenPGP public key"
                + (f" (gpg: {words[-1][:200]})" if words else "")
            )
        listing = _run([*base, "--with-colons", "--list-keys"], home=home).stdout.decode()
        secret = _run([*base, "--with-colons", "--list-secret-keys"], home=home).stdout.decode()
        if secret.strip():
            raise InvalidInput("the channel key holds a secret key: give the public key only")
        fingerprints = []
        expect = False
        for line in listing.splitlines():
            fields = line.split(":")
            if fields[0] == "pub":
                expect = True
            elif fields[0] == "fpr" and expect:
                fingerprints.append(fields[9])
                expect = False
        if len(fingerprints) != 1:
            raise InvalidInput(
                f"the channel key holds {len(fingerprints)} primary keys: give exactly one"
            )
        exported = _run([*base, "--export"], home=home)
        if exported.returncode != 0 or not exported.stdout:
            raise InvalidInput("the channel key could not be exported by gpg")
        return fingerprints[0], exported.stdout


def verify_clearsigned(data: bytes, keyring: bytes, what: str) -> bytes:
    """The text of a clearsigned ``InRelease`` if its signature is good and made by the
    keyring's key; else :class:`BadSignature` naming why."""
    with tempfile.TemporaryDirectory(prefix="goldfleet-gpgv-") as home:
        os.chmod(home, 0o700)
        ring = Path(home) / "channel.gpg"
        ring.write_bytes(keyring)
        out = Path(home) / "text"
        r = _run(
            [
                "gpgv",
                "--status-fd",
                "1",
                "--keyring",
                str(ring),
                "--output",
                str(out),
                "-",
            ],
            data=data,
            home=home,
        )
        status = r.stdout.decode(errors="replace")
        if r.returncode != 0 or "[GNUPG:] VALIDSIG" not in status:
            if "NODATA" in status or "no signature found" in r.stderr.decode(errors="replace"):
                why = "it is not signed"
            elif "NO_PUBKEY" in status or "ERRSIG" in status:
                why = "it is signed by a key that is not the channel's"
            elif "BADSIG" in status:
                why = "its signature does not match its text (altered)"
            else:
                why = "its signature could not be verified"
            raise BadSignature(f"{what} is refused: {why}; nothing was downloaded")
        return out.read_bytes()
