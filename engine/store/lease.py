"""The one fenced lease queue: the outbox, the notes to the team and the webhook deliveries.

A queue is a table with a ``status``, a due time, ``attempts`` and the lease columns
(``models.Leased``: ``lease_owner``, ``lease_until``, ``fence``). A row is *claimable* when it
is due and under no running lease: waiting for its turn, or held by a worker whose lease ran
out (it crashed, or hangs). A lease runs while ``now < lease_until``.

``claim`` takes up to N claimable rows for a worker in one UPDATE, oldest due first
(PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so concurrent workers take disjoint rows; SQLite: the
writer's ``BEGIN IMMEDIATE`` serializes claims). For each it sets the leased status, the owner
and the lease's end, counts an attempt and bumps the ``fence``.

Every later write of that worker is conditional on the row's id *and* the fence its claim
returned (``Claimed``): extending the lease, giving the row back unsent, and its result. Once
another worker has claimed the row again, such a write changes nothing and says so (False):
a worker that lost its lease can never overwrite the result of the one that holds the row.

The ``*_statement`` builders take their values as parameters (``b_id``, ``b_fence``, ``b_now``,
``b_until``), so that the sender's per-email hot path can compile them once
(``engine.store.prepared``); the methods run the same statements through a session.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Select,
    Table,
    Update,
    and_,
    bindparam,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from engine.store.db import Database, lock_rows
from engine.store.models import Base, Leased, Message, Notification, WebhookDelivery


@dataclass(frozen=True, slots=True)
class Claimed:
    """A row a claim took: its id, the fence the claim set (the token every later write of
    the worker shows) and the attempt the claim counted (``attempts`` after it)."""

    id: int
    fence: int
    attempt: int = 1


class LeaseQueue:
    """A table worked as a fenced lease queue (see the module's docstring).

    ``due`` names the column holding when a waiting row is due; ``waiting`` is the status of
    a row waiting for its turn and ``leased`` the status a claim gives it (by default the
    same: the lease alone then keeps other workers off).
    """

    def __init__(
        self, model: type[Base], *, due: str, waiting: str, leased: str | None = None
    ) -> None:
        if not issubclass(model, Leased):
            raise TypeError(f"{model.__name__} has no lease columns (models.Leased)")
        self.table = cast(Table, model.__table__)
        c = self.table.c
        self.due = c[due]
        self.waiting = waiting
        self.leased = leased or waiting
        # This row as its claim left it: the fence check every write of the worker carries.
        self.fenced = and_(c.id == bindparam("b_id"), c.fence == bindparam("b_fence"))
        self.ours = and_(self.fenced, c.status == self.leased)
        # ... and its lease still running at b_now.
        self.live = and_(self.ours, c.lease_until > bindparam("b_now"))

    # -- claiming -------------------------------------------------------------------------------

    def claimable(self, now: datetime) -> ColumnElement[bool]:
        """Due at ``now`` and under no running lease (never leased, or its lease ran out).

        A leased row keeps its due time, which had come when it was claimed: the one
        condition finds both the rows waiting for their turn and those a worker let lapse.
        """
        c = self.table.c
        statuses = sorted({self.waiting, self.leased})
        return and_(
            c.status.in_(statuses) if len(statuses) > 1 else c.status == self.waiting,
            self.due <= now,
            or_(c.lease_until.is_(None), c.lease_until <= now),
        )

    def select_due(self, columns: Any, now: datetime) -> Select[Any]:
        """``SELECT columns`` of the rows claimable at ``now``: join and filter it further,
        then hand it to ``claim`` (with the id column) or count it."""
        return select(columns).select_from(self.table).where(self.claimable(now))

    def claim(
        self,
        session: Session,
        db: Database,
        candidates: Select[Any],
        *,
        owner: str,
        until: datetime,
        limit: int,
    ) -> list[Claimed]:
        """Lease up to ``limit`` of ``candidates`` (a ``select_due`` of the id column), the
        oldest due first, to ``owner`` until ``until``, in the session's transaction."""
        c = self.table.c
        chosen = lock_rows(db, candidates.order_by(self.due).limit(limit), of=self.table)
        stmt = (
            update(self.table)
            .where(c.id.in_(chosen.scalar_subquery()))
            .values(
                status=self.leased,
                lease_owner=owner,
                lease_until=until,
                fence=c.fence + 1,
                attempts=c.attempts + 1,
            )
            .returning(c.id, c.fence, c.attempts)
        )
        return [Claimed(id_, fence, attempt) for id_, fence, attempt in session.execute(stmt)]

    # -- the statements, with parameters --------------------------------------------------------

    def extend_statement(self, *also: ColumnElement[bool]) -> Update:
        """Move the lease's end to ``b_until`` while it still runs at ``b_now`` (and ``also``
        holds)."""
        return update(self.table).where(self.live, *also).values(lease_until=bindparam("b_until"))

    def give_back_statement(self, *, live: bool = False) -> Update:
        """Back to waiting, unleased, the claim's attempt uncounted (with ``live``: only while
        the lease still runs at ``b_now``)."""
        return (
            update(self.table)
            .where(self.live if live else self.ours)
            .values(
                status=self.waiting,
                lease_owner=None,
                lease_until=None,
                attempts=self.table.c.attempts - 1,
            )
        )

    def finish_statement(self, **values: Any) -> Update:
        """The result write: ``values`` and the lease ended, while the row is still ours."""
        return (
            update(self.table).where(self.ours).values(lease_owner=None, lease_until=None, **values)
        )

    # -- the same through a session -------------------------------------------------------------

    def extend(self, session: Session, claimed: Claimed, *, now: datetime, until: datetime) -> bool:
        """Keep the row until ``until``; False when the lease ran out or the row is not ours."""
        params = _params(claimed) | {"b_now": now, "b_until": until}
        return _changed(session.execute(self.extend_statement(), params))

    def give_back(self, session: Session, claimed: Iterable[Claimed]) -> None:
        """Give rows back unsent (a shutdown, a pause); those no longer ours are left alone."""
        rows = [_params(c) for c in claimed]
        if rows:
            session.execute(self.give_back_statement(), rows)

    def finish(self, session: Session, claimed: Claimed, **values: Any) -> bool:
        """Write the result (``values``) and end the lease, fenced: False, and nothing
        changed, when the row is no longer this claim's (claimed again, or finished)."""
        return _changed(session.execute(self.finish_statement(**values), _params(claimed)))


def _params(claimed: Claimed) -> dict[str, Any]:
    return {"b_id": claimed.id, "b_fence": claimed.fence}


def _changed(result: Any) -> bool:
    return bool(cast(CursorResult[Any], result).rowcount)


# The queues. An email is ``sending`` while leased, and ``cancelled`` meanwhile by the planner
# without a fence bump (engine.send.claims records it as sent if the server took it).
OUTBOX = LeaseQueue(Message, due="due_at", waiting="queued", leased="sending")
NOTES = LeaseQueue(Notification, due="due_at", waiting="queued")
WEBHOOK_DELIVERIES = LeaseQueue(WebhookDelivery, due="next_at", waiting="pending")
