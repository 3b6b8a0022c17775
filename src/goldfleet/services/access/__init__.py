"""Who may call: API tokens (stored as sha256), their roles, authentication."""

from __future__ import annotations

from goldfleet.services.access._tokens import (
    ROLES,
    Caller,
    authenticate,
    create_token,
    hash_token,
    list_tokens,
    revoke_token,
)

__all__ = [
    "ROLES",
    "Caller",
    "authenticate",
    "create_token",
    "hash_token",
    "list_tokens",
    "revoke_token",
]
