"""``goldfleet user|role|grant``: users with passwords, custom roles, grants (docs/access.md).

Passwords are read from a file (``--password-file F``, ``-`` for standard input), never from
the command line, where other users of the machine could see them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from goldfleet.cli import output
from goldfleet.cli.common import JsonOpt, call, fail

user_app = typer.Typer(no_args_is_help=True, help="Users who log in with a password.")
role_app = typer.Typer(no_args_is_help=True, help="Roles: named sets of permissions.")
grant_app = typer.Typer(no_args_is_help=True, help="Grants of a role on a scope.")

PasswordFileOpt = Annotated[
    Path,
    typer.Option("--password-file", help="A file holding the password (- for stdin)."),
]
UserOpt = Annotated[str | None, typer.Option("--user", help="The user holding the grant.")]
TokenOpt = Annotated[str | None, typer.Option("--token", help="The token holding the grant.")]


def read_password(path: Path) -> str:
    """The password in ``path`` (its first line, without the line end)."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as exc:
        fail(f"cannot read the password file {path}: {exc.strerror}")
    except UnicodeDecodeError:
        fail(f"the password file {path} is not text")
    lines = text.splitlines()
    if not lines or not lines[0]:
        fail(f"the password file {path} is empty")
    return lines[0]


def _grants(items: list[str]) -> str:
    return ", ".join(items)


# --- users -------------------------------------------------------------------------------


@user_app.command("create")
def user_create(
    name: str,
    role: Annotated[str, typer.Option(help="admin, operator, helpdesk, auditor, user or custom.")],
    password_file: PasswordFileOpt,
    scope: Annotated[
        str | None,
        typer.Option(help="/, template:T, pool:P, site:S, cluster:C, clone:C or self."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a user with a password and one grant (scope / by default; self for role user)."""
    body: dict[str, Any] = {"name": name, "role": role, "password": read_password(password_file)}
    if scope is not None:
        body["scope"] = scope
    u = call("POST", "/users", json=body)
    if as_json:
        output.emit_json(u)
    else:
        output.console.print(f"user {u['name']} created: {_grants(u['grants'])}", highlight=False)


@user_app.command("passwd")
def user_passwd(name: str, password_file: PasswordFileOpt, as_json: JsonOpt = False) -> None:
    """Set a user's password (its login sessions end)."""
    call("POST", f"/users/{name}/password", json={"password": read_password(password_file)})
    if as_json:
        output.emit_json({"user": name, "password_changed": True})
    else:
        output.console.print(f"password of {name} changed", highlight=False)


@user_app.command("disable")
def user_disable(name: str, as_json: JsonOpt = False) -> None:
    """Disable a user: no login, its sessions end."""
    u = call("POST", f"/users/{name}/disable")
    output.emit_json(u) if as_json else output.console.print(f"{name} disabled", highlight=False)


@user_app.command("enable")
def user_enable(name: str, as_json: JsonOpt = False) -> None:
    """Enable a disabled user."""
    u = call("POST", f"/users/{name}/enable")
    output.emit_json(u) if as_json else output.console.print(f"{name} enabled", highlight=False)


@user_app.command("list")
def user_list(as_json: JsonOpt = False) -> None:
    """Users and their grants (never their passwords)."""
    items = call("GET", "/users")
    if as_json:
        output.emit_json(items)
        return
    output.table(
        None,
        ["name", "grants", "disabled", "created"],
        [
            [u["name"], _grants(u["grants"]), u["disabled"], str(u["created_at"])[:19]]
            for u in items
        ],
    )


@user_app.command("login")
def user_login(name: str, password_file: PasswordFileOpt, as_json: JsonOpt = False) -> None:
    """Log in: print a session secret to use as GOLDFLEET_TOKEN (expires in 12 hours)."""
    r = call("POST", "/auth/login", json={"name": name, "password": read_password(password_file)})
    output.emit_json(r) if as_json else output.console.print(r["token"], highlight=False)


@user_app.command("whoami")
def user_whoami(as_json: JsonOpt = False) -> None:
    """Who the CLI calls as (token or session) and the grants it holds."""
    me = call("GET", "/auth/me")
    if as_json:
        output.emit_json(me)
    else:
        output.console.print(f"{me['kind']} {me['name']}: {_grants(me['grants'])}", highlight=False)


# --- roles -------------------------------------------------------------------------------


@role_app.command("create")
def role_create(
    name: str,
    allow: Annotated[str, typer.Option(help="Permissions, comma-separated (clone.restore,…).")],
    as_json: JsonOpt = False,
) -> None:
    """Make a custom role from the permission list (docs/access.md)."""
    r = call("POST", "/roles", json={"name": name, "allow": allow.split(",")})
    if as_json:
        output.emit_json(r)
    else:
        output.console.print(f"role {name}: {', '.join(r['permissions'])}", highlight=False)


@role_app.command("list")
def role_list(as_json: JsonOpt = False) -> None:
    """The built-in and custom roles with their permissions."""
    items = call("GET", "/roles")
    if as_json:
        output.emit_json(items)
        return
    output.table(
        None,
        ["role", "built in", "permissions"],
        [[r["name"], r["builtin"], ", ".join(r["permissions"])] for r in items],
    )


@role_app.command("delete")
def role_delete(name: str, as_json: JsonOpt = False) -> None:
    """Delete a custom role no grant uses."""
    call("DELETE", f"/roles/{name}")
    output.emit_json({"deleted": name}) if as_json else output.console.print(f"deleted {name}")


# --- grants ------------------------------------------------------------------------------


def _holder(user: str | None, token: str | None) -> dict[str, str]:
    if (user is None) == (token is None):
        fail("give --user NAME or --token NAME")
    return {"user": user} if user is not None else {"token": token or ""}


@grant_app.command("add")
def grant_add(
    role: str,
    scope: Annotated[str, typer.Argument(help="/, template:T, pool:P, site:S, cluster:C…")],
    user: UserOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Grant ROLE on SCOPE to a user or a token."""
    g = call("POST", "/grants", json={**_holder(user, token), "role": role, "scope": scope})
    if as_json:
        output.emit_json(g)
    else:
        output.console.print(
            f"{g['holder_kind']} {g['holder']} holds {role} on {scope}", highlight=False
        )


@grant_app.command("remove")
def grant_remove(
    role: str,
    scope: str,
    user: UserOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove a grant of ROLE on SCOPE."""
    holder = _holder(user, token)
    call("POST", "/grants/remove", json={**holder, "role": role, "scope": scope})
    if as_json:
        output.emit_json({**holder, "role": role, "scope": scope, "removed": True})
    else:
        output.console.print(f"removed {role} on {scope}", highlight=False)


@grant_app.command("list")
def grant_list(user: UserOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Every grant, or those of one user or token."""
    params = {k: v for k, v in {"user": user, "token": token}.items() if v is not None}
    items = call("GET", "/grants", params=params)
    if as_json:
        output.emit_json(items)
        return
    output.table(
        None,
        ["holder", "role", "scope"],
        [[f"{g['holder_kind']} {g['holder']}", g["role"], g["scope"]] for g in items],
    )
