"""Assigning a result to a reader: an admin asks a reviewer (typically a second reader, so that the
review analytics can measure agreement between readers) to read one model's result of a case.

An assignment is open until that reviewer gives a verdict on the result; the reviewer finds their open
ones under "assigned to me" on the worklist. Assigning the same reader twice changes nothing; blind
reading applies as always (the second reader does not see the first reader's verdict before their own).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Assignment, User, Verdict
from app.services import audit
from app.services.accounts import get_user_by_name
from app.services.errors import InvalidInputError
from app.services.predictions import get_result


def assign(*, session: Session, prediction_id: int, model_id: int, reviewer: str, actor: User) -> Assignment:
    """Assign the (prediction, model) result to the active user named `reviewer` (audited) and commit.
    NotFoundError: no such result; InvalidInputError: no such active user, or one who already read it."""
    result = get_result(session=session, prediction_id=prediction_id, model_id=model_id)
    user = get_user_by_name(session=session, username=reviewer.strip())
    if user is None or not user.active:
        raise InvalidInputError(f"no active user named {reviewer.strip()!r} to assign the case to")
    read = session.scalar(select(Verdict.id).where(Verdict.result_id == result.id, Verdict.reviewer_id == user.id))
    if read is not None:
        raise InvalidInputError(f"{user.username} has already given a verdict on this result; choose another reader")
    existing = session.scalar(
        select(Assignment).where(Assignment.result_id == result.id, Assignment.reviewer_id == user.id)
    )
    if existing is not None:
        return existing
    row = Assignment(result_id=result.id, reviewer_id=user.id, assigned_by_id=actor.id)
    session.add(row)
    session.flush()
    audit.record(
        session=session,
        actor=actor,
        action="case.assign",
        target_type="prediction",
        target_id=prediction_id,
        details={"model_id": model_id, "result_id": result.id, "reviewer": user.username},
    )
    session.commit()
    return row


def open_count(*, session: Session, user: User) -> int:
    """How many results are assigned to `user` and still wait for their verdict."""
    done = select(Verdict.result_id).where(Verdict.reviewer_id == user.id)
    stmt = select(Assignment.id).where(Assignment.reviewer_id == user.id, Assignment.result_id.not_in(done))
    return len(list(session.scalars(stmt)))


def assigned_readers(*, session: Session, result_ids: list[int]) -> dict[int, list[str]]:
    """result id → names of the readers it is assigned to (open or done), for the worklist."""
    if not result_ids:
        return {}
    out: dict[int, list[str]] = {}
    for a in session.scalars(select(Assignment).where(Assignment.result_id.in_(result_ids)).order_by(Assignment.id)):
        out.setdefault(a.result_id, []).append(a.reviewer.username)
    return out
