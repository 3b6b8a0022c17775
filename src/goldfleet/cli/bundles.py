"""``goldfleet bundle`` and ``goldfleet keys``: signed offline update bundles and the keys that
sign them. Talks to the API like every command."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated, Any

import typer

from goldfleet.cli import output
from goldfleet.cli.client import Client, ClientError
from goldfleet.cli.common import JsonOpt
from goldfleet.cli.common import call as _call
from goldfleet.cli.common import fail as _fail
from goldfleet.domain.names import parse_version
from goldfleet.errors import InvalidInput

bundle_app = typer.Typer(
    no_args_is_help=True, help="Signed offline update bundles of template versions."
)
keys_app = typer.Typer(no_args_is_help=True, help="Keys that sign and are trusted for bundles.")


@bundle_app.command("export")
def export(
    template: str,
    out: Annotated[Path, typer.Option("-o", "--output", help="The bundle file to write.")],
    since: Annotated[
        str | None, typer.Option(help="Carry only what a receiver holding this version lacks.")
    ] = None,
    policy_only: Annotated[
        bool, typer.Option("--policy-only", help="Template settings only, no layers.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a signed bundle of TEMPLATE's versions (and the layers a receiver lacks)."""
    import httpx

    params: dict[str, Any] = {"policy_only": policy_only}
    if since is not None:
        try:
            params["since"] = parse_version(since)
        except InvalidInput as exc:
            _fail(exc.message)
    client = Client.from_home()
    work = out.with_name(f".{out.name}.{secrets.token_hex(4)}.part")  # one per export
    written, receiving = 0, False
    try:
        with client.http.stream("GET", f"/templates/{template}/bundle", params=params) as resp:
            try:
                client.raise_for(resp)
            except ClientError as exc:
                _fail(exc.message)
            receiving = True
            with work.open("xb") as f:
                for block in resp.iter_bytes(1 << 20):
                    f.write(block)
                    written += len(block)
        os.replace(work, out)  # only a body that ended as HTTP says it should
    except httpx.HTTPError as exc:
        if not receiving:
            _fail(f"the download from {client.url} failed: {exc}")
        # the server aborts the response when it cannot write the whole bundle
        _fail(
            f"the bundle download from {client.url} was cut off after {written} bytes ({exc});"
            f" {out} was not written (the server's log says why)"
        )
    finally:
        work.unlink(missing_ok=True)
    result = {"template": template, "file": str(out), "bytes": written}
    if as_json:
        output.emit_json(result)
    else:
        output.console.print(f"bundle of {template} written to {out} ({output.size(written)})")


@bundle_app.command("import")
def import_(
    file: Path,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Only check: signature, binding, digests and what would change; writes"
            " nothing, exits 0 if the import would succeed and 1 if not.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check a bundle's signature and every layer, then add its versions."""
    if not file.is_file():
        _fail(f"{file} is not a readable file")
    try:
        r = Client.from_home().upload("/bundles/check" if check else "/bundles/import", file, {})
    except ClientError as exc:
        _fail(exc.message)
    if check:
        _print_check(r, as_json)
        return
    if as_json:
        output.emit_json(r)
        return
    added = ", ".join(f"v{n}" for n in r["versions_added"]) or "no new versions"
    output.console.print(
        f"{r['template']}: {added} imported ({r['layers_received']} layers, signed by"
        f" {r['signer']})"
    )
    if r["versions_skipped"]:
        held = ", ".join(f"v{n}" for n in r["versions_skipped"])
        output.console.print(f"already held: {held}")
    if r.get("bound_now"):
        output.console.print(f"{r['template']} is now bound to key {r['bound_to']}")
    for p in r.get("policies", []):
        output.console.print(
            f"{p['name']}: {p['before']} -> {p['after']}: {p['note']}", markup=False
        )


def _versions(numbers: list[int]) -> str:
    return ", ".join(f"v{n}" for n in numbers) or "none"


def _print_check(r: dict[str, Any], as_json: bool) -> None:
    """The answer of ``import --check``; exit 1 when the import would be refused."""
    if as_json:
        output.emit_json(r)
    elif not r["file_ok"]:
        output.err_console.print(f"error: {r['refusal']}", markup=False, highlight=False)
    else:
        t = r["template"]
        made = " (a new template)" if r["creates_template"] else ""
        output.console.print(f"the import would succeed: template {t}{made}", highlight=False)
        bound = "would be bound" if r["bound_now"] else "is bound"
        output.console.print(f"signed by {r['signer']}; {t} {bound} to key {r['bound_to']}")
        output.console.print(
            f"versions added: {_versions(r['versions_added'])}; already held:"
            f" {_versions(r['versions_skipped'])}; current: v{r['current_before'] or 0} ->"
            f" v{r['current_after'] or 0}"
        )
        output.console.print(
            f"layers checked: {r['layers_checked']} ({output.size(r['layer_bytes'])})"
        )
        for p in r["policies"]:
            output.console.print(
                f"{p['name']}: {p['before']} -> {p['after']}: {p['note']}", markup=False
            )
        behind = r["clones_behind"]
        output.console.print(
            f"clones: {r['clones']}, of which {len(behind)} not on v{r['current_after'] or 0}"
            + (f" (clone recreate --template {t} would move them)" if behind else "")
        )
    if not r["file_ok"]:
        raise typer.Exit(1)


@bundle_app.command("rebind")
def rebind(template: str, key: str, as_json: JsonOpt = False) -> None:
    """Bind TEMPLATE to the trusted KEY (its name or public key): its bundles must then be
    signed by that key."""
    r = _call("POST", f"/templates/{template}/rebind", json={"key": key})
    if as_json:
        output.emit_json(r)
    else:
        before = f" (was {r['previous']})" if r["previous"] else ""
        output.console.print(
            f"{template} is bound to key {r['key']} ({r['fingerprint']}){before}", highlight=False
        )


@keys_app.command("show")
def show(as_json: JsonOpt = False) -> None:
    """This server's public key and the keys it trusts."""
    r = _call("GET", "/keys")
    if as_json:
        output.emit_json(r)
        return
    own = r["own"]
    output.console.print(
        f"this server: {own['public_key']} ({own['fingerprint']})", highlight=False
    )
    output.table(
        "trusted",
        ["name", "public key", "fingerprint"],
        [[k["name"], k["public_key"], k["fingerprint"]] for k in r["trusted"]],
    )


@keys_app.command("trust")
def trust(name: str, public_key: str, as_json: JsonOpt = False) -> None:
    """Trust bundles signed by PUBLIC_KEY (hex or base64), under NAME."""
    r = _call("POST", "/keys/trust", json={"name": name, "public_key": public_key})
    if as_json:
        output.emit_json(r)
    else:
        output.console.print(f"trusted {name} ({r['fingerprint']})")


@keys_app.command("untrust")
def untrust(name: str, as_json: JsonOpt = False) -> None:
    """Stop trusting the key named NAME."""
    _call("DELETE", f"/keys/{name}")
    output.emit_json({"untrusted": name}) if as_json else output.console.print(f"untrusted {name}")
