"""``goldfleet guest-tool`` and ``goldfleet compliance``: the guest tool shipped in the package
and the quarantine policies of templates (docs/guests.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from goldfleet.cli import output
from goldfleet.cli.common import JsonOpt
from goldfleet.cli.common import call as _call
from goldfleet.cli.common import fail as _fail

guest_tool_app = typer.Typer(
    no_args_is_help=True, help="The goldfleet guest tool shipped in this package."
)
compliance_app = typer.Typer(
    no_args_is_help=True, help="Version-based network quarantine: policies and their checks."
)
agent_app = typer.Typer(
    no_args_is_help=True, help="The guest tool's version in templates and running clones."
)
TemplateOpt = Annotated[str | None, typer.Option("--template", help="Only this template.")]

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
        output.emit_json({"valid": True, "policy": quarantine.policy_json(policy)})
        return
    levels = ", ".join(
        f"{v.name} ({v.descriptor})" + (" ← threshold" if v.name == policy.threshold else "")
        for v in policy.versions
    )
    print(f"{file}: valid {policy.kind} policy" + (f": {levels}" if levels else ""))


def _print_policy(r: dict[str, Any]) -> None:
    p = r["policy"]
    print(f"template {r['template']}: policy {r['number']} ({p['kind']}), by {r['actor']}")
    if p["versions"]:
        rows = [
            [
                v["name"],
                v["descriptor"],
                "threshold" if v["name"] == p["threshold"] else "",
                v["description"],
            ]
            for v in p["versions"]
        ]
        output.table(None, ["version", "descriptor", "", "description"], rows)
    else:
        print(f"plug-in: {p['plugin']['path']}")
    allow = ", ".join(
        [
            *(["DHCP"] if p["restricted_access"]["dhcp"] else []),
            *(["DNS"] if p["restricted_access"]["dns"] else []),
            *p["restricted_access"]["allow"],
        ]
    )
    print(f"restricted clones reach: {allow or 'nothing'}; silent agents: {p['unanswered']}")
    print(f"filters: {r['filters']['normal']}, {r['filters']['restricted']}")


@compliance_app.command("apply")
def apply(
    template: Annotated[str, typer.Argument(help="The template the policy is for.")],
    file: Annotated[Path, typer.Argument(help="The policy, a TOML file.")],
    as_json: JsonOpt = False,
) -> None:
    """Apply a policy to a template: validated again on the server, kept numbered, audited;
    the template's running clones are evaluated under it at once."""
    r = _call("PUT", f"/templates/{template}/compliance", json={"policy": read_policy_file(file)})
    if as_json:
        output.emit_json(r)
    else:
        _print_policy(r)


@compliance_app.command("show")
def show(
    template: Annotated[str, typer.Argument(help="The template.")],
    number: Annotated[int | None, typer.Option(help="An earlier policy number.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The template's quarantine policy (its latest, or --number N)."""
    r = _call(
        "GET",
        f"/templates/{template}/compliance",
        params={"number": number} if number is not None else None,
    )
    if as_json:
        output.emit_json(r)
    else:
        _print_policy(r)


@compliance_app.command("status")
def status(template: TemplateOpt = None, as_json: JsonOpt = False) -> None:
    """Per clone: descriptor, quarantine version, access (normal, restricted, unknown), since
    when and why."""
    r = _call("GET", "/compliance", params={"template": template} if template else None)
    if as_json:
        output.emit_json(r)
        return
    output.table(
        None,
        ["clone", "template", "descriptor", "version", "access", "since", "why"],
        [
            [
                g["clone"],
                g["template"],
                g["descriptor"] or "-",
                g["quarantine_version"] or "-",
                g["access"],
                (g["since"] or "-")[:19],
                g["reason"],
            ]
            for g in r
        ],
    )


@compliance_app.command("check")
def check(template: TemplateOpt = None, as_json: JsonOpt = False) -> None:
    """Evaluate now: read every running clone's agent, switch the filters of those whose
    access changed, tell their users."""
    r = _call("POST", "/compliance/check", json={"template": template})
    if as_json:
        output.emit_json(r)
        return
    print(
        f"{r['clones']} running clones read, {r['evaluated']} under a policy:"
        f" {r['normal']} normal, {r['restricted']} restricted ({r['unanswered']} silent);"
        f" {r['changed']} changed, {r['switched']} filters switched, {r['messages']} messages"
        f" in {r['seconds']:.2f} s"
    )
    for e in r["errors"]:
        output.err_console.print(f"[yellow]warning:[/yellow] {e}", highlight=False)


@agent_app.command("status")
def agent_status(as_json: JsonOpt = False) -> None:
    """Clones and templates whose guest tool is older than the packaged one, or missing."""
    r = _call("GET", "/agents")
    if as_json:
        output.emit_json(r)
        return
    print(
        f"packaged goldfleet-guest {r['packaged']}: {r['outdated']} clones outdated,"
        f" {r['missing']} without it, {r['unknown']} not read yet"
    )
    if r["clones"]:
        output.table(
            None,
            ["clone", "template", "tool"],
            [[c["clone"], c["template"], c["tool_version"] or "missing"] for c in r["clones"]],
        )
    for t in r["templates"]:
        print(f"template {t['template']} v{t['version']}: tool {t['tool_version'] or 'unknown'}")


def print_updates(items: list[dict[str, Any]]) -> None:
    output.table(
        None,
        ["id", "template", "status", "version", "operation", "pushed", "note"],
        [
            [
                u["id"],
                u["template"],
                u["status"],
                f"v{u['version']}" if u["version"] else "-",
                u["operation_id"] or "-",
                len(u["pushed"]),
                u["error"] or "",
            ]
            for u in items
        ],
    )


@agent_app.command("updates")
def updates(as_json: JsonOpt = False) -> None:
    """Every agent update request: its step, the version and recreate it made, full clones
    pushed, and what it waits on."""
    r = _call("GET", "/agents/updates")
    if as_json:
        output.emit_json(r)
    else:
        print_updates(r)
