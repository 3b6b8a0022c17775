"""``goldfleet guest-tool`` and ``goldfleet compliance``: the guest tool shipped in the package
and the quarantine policies of templates (docs/guests.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from goldfleet.cli import output
from goldfleet.cli.common import JsonOpt
from goldfleet.cli.common import fail as _fail

guest_tool_app = typer.Typer(
    no_args_is_help=True, help="The goldfleet guest tool shipped in this package."
)
compliance_app = typer.Typer(
    no_args_is_help=True, help="Version-based network quarantine: policies and their checks."
)

MAX_POLICY_BYTES = 1 << 20


@guest_tool_app.command("path")
def tool_path() -> None:
    """Where the packaged goldfleet-guest is (copy it into images you build)."""
    from goldfleet import guest

    print(guest.tool_path())


@guest_tool_app.command("version")
def tool_version() -> None:
    """The version of the packaged goldfleet-guest."""
    from goldfleet import guest

    print(guest.tool_version())


def policy_json(policy: Any) -> dict[str, Any]:
    return {
        "kind": str(policy.kind),
        "threshold": policy.threshold,
        "versions": [
            {"name": v.name, "descriptor": v.descriptor, "description": v.description}
            for v in policy.versions
        ],
        "restricted_message": policy.restricted_message,
        "update_available_message": {
            "enabled": policy.update_message_enabled,
            "text": policy.update_message,
        },
        "restricted_access": {
            "dhcp": policy.allow_dhcp,
            "dns": policy.allow_dns,
            "allow": [str(e) for e in policy.allow],
        },
        "unanswered": str(policy.unanswered),
        "plugin": (
            {"path": policy.plugin.path, "timeout_s": policy.plugin.timeout_s}
            if policy.plugin
            else None
        ),
    }


def read_policy_file(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_POLICY_BYTES:
            _fail(f"{path} is larger than {MAX_POLICY_BYTES} bytes: not a policy")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        _fail(f"{path} is not UTF-8 text")
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror}")


@compliance_app.command("validate")
def validate(
    file: Annotated[Path, typer.Argument(help="The policy, a TOML file.")],
    as_json: JsonOpt = False,
) -> None:
    """Check a policy file here, without a server: exit 0 when valid, 1 with each problem and
    its line when not."""
    from goldfleet.domain import quarantine

    text = read_policy_file(file)
    try:
        policy = quarantine.parse_policy(text)
    except quarantine.PolicyError as exc:
        if as_json:
            output.emit_json(
                {
                    "valid": False,
                    "problems": [{"line": p.line, "message": p.message} for p in exc.problems],
                }
            )
        else:
            for p in exc.problems:
                print(f"{file}:{p.line}: {p.message}" if p.line else f"{file}: {p.message}")
        raise typer.Exit(1) from None
    if as_json:
        output.emit_json({"valid": True, "policy": policy_json(policy)})
        return
    levels = ", ".join(
        f"{v.name} ({v.descriptor})" + (" ← threshold" if v.name == policy.threshold else "")
        for v in policy.versions
    )
    print(f"{file}: valid {policy.kind} policy" + (f": {levels}" if levels else ""))
