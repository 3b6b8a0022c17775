"""The audit log: every change, who made it, in the same transaction as the change."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from goldfleet.db.tables import AuditEntry
from goldfleet.services.common.views import AuditView


def record(s: Session, actor: str, action: str, target: str, **detail: Any) -> None:
    s.add(AuditEntry(actor=actor, action=action, target=target, detail=detail))


def list_audit(ctx: Any, *, limit: int = 100) -> list[AuditView]:
    with ctx.session() as s:
        rows = s.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit))
        return [
            AuditView(at=r.at, actor=r.actor, action=r.action, target=r.target, detail=r.detail)
            for r in rows
        ]
