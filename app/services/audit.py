"""The audit log: who created or cancelled a training job, who promoted or rolled back a model, and
what the system did on its own (a reaped job). Rows are append-only (database triggers); `record`
adds one to the caller's transaction, which commits it together with the change it describes.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import MAX_ROW_ID
from app.models import AuditEntry, User

SYSTEM_ACTOR = "system"


def record(
    *,
    session: Session,
    actor: User | None,
    action: str,
    target_type: str,
    target_id: int | None,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """Add an entry (not committed: it belongs to the caller's transaction). `actor=None` is the system."""
    entry = AuditEntry(
        actor_id=actor.id if actor is not None else None,
        actor=actor.username if actor is not None else SYSTEM_ACTOR,
        action=action,
        target_type=target_type,
        target_id=target_id,
        details=details or {},
    )
    session.add(entry)
    return entry


def list_entries(
    *, session: Session, limit: int = 100, offset: int = 0, action_prefix: str | None = None
) -> list[AuditEntry]:
    """Newest first. `action_prefix` filters, e.g. 'model.' or 'training_job.'."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit).offset(min(offset, MAX_ROW_ID))
    action_prefix = (action_prefix or "").replace("\x00", "")  # PostgreSQL cannot compare NUL
    if action_prefix:
        query = query.where(AuditEntry.action.startswith(action_prefix, autoescape=True))
    return list(session.scalars(query))
