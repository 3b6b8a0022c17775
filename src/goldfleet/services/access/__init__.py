"""Who may call and what they may do: API tokens (stored as sha256), users (Argon2 passwords)
and their login sessions, roles (named permission sets), grants of a role on a scope, and the
one policy every API route asks (``authorize``, ``reach``, ``visible``)."""

from __future__ import annotations

from goldfleet.domain.access import PERMISSIONS
from goldfleet.services.access._policy import (
    Caller,
    authorize,
    reach,
    visible,
    visible_operations,
)
from goldfleet.services.access._tokens import (
    ROLES,
    authenticate,
    create_token,
    hash_token,
    list_tokens,
    revoke_token,
)
from goldfleet.services.access._users import (
    SESSION_HOURS,
    GrantView,
    Holder,
    LoginView,
    RoleView,
    UserView,
    add_grant,
    create_role,
    create_user,
    delete_role,
    list_grants,
    list_roles,
    list_users,
    login,
    logout,
    remove_grant,
    set_disabled,
    set_password,
)

__all__ = [
    "PERMISSIONS",
    "ROLES",
    "SESSION_HOURS",
    "Caller",
    "GrantView",
    "Holder",
    "LoginView",
    "RoleView",
    "UserView",
    "add_grant",
    "authenticate",
    "authorize",
    "create_role",
    "create_token",
    "create_user",
    "delete_role",
    "hash_token",
    "list_grants",
    "list_roles",
    "list_tokens",
    "list_users",
    "login",
    "logout",
    "reach",
    "remove_grant",
    "revoke_token",
    "set_disabled",
    "set_password",
    "visible",
    "visible_operations",
]
