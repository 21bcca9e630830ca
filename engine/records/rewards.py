"""Thank-you gifts for converted referrals: one per referral and role (referrer, friend).

What each side gets is set in settings [program]: a fixed credit, a code from a pool file (one
code per line; each code is given once), or nothing. Issued in the transaction that records the
conversion, so a conversion reported twice, or twice at once, gives one gift (the unique key on
referral and role guards the rest). A flagged referral (self-referral, a friend somebody else
introduced first, a friend who was already a customer) gets none.
"""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.program.settings import ProgramSettings, Settings
from engine.store.db import Database, insert_ignore
from engine.store.models import Alert, Referral, Reward

log = logging.getLogger(__name__)

ROLES = ("referrer", "friend")


def describe(kind: str, amount: Decimal | None, code: str | None, currency: str) -> str:
    """The gift as an email says it: "a 20 USD credit", "the gift code ABC-123"."""
    if kind == "credit":
        assert amount is not None
        whole = amount == amount.to_integral_value()
        return f"a {amount:.0f} {currency} credit" if whole else f"a {amount:.2f} {currency} credit"
    return f"the gift code {code}"


def _rule(program: ProgramSettings, role: str) -> tuple[str, Decimal, str]:
    """(kind, credit, codes file) of ``role``'s gift."""
    credit = Decimal(str(getattr(program, f"{role}_credit")))
    return getattr(program, f"{role}_reward"), credit, getattr(program, f"{role}_codes")


def _next_code(session: Session, pool: Path) -> str | None:
    """The first code in the pool file that was never given; None when all were."""
    codes = [line.strip() for line in pool.read_text(encoding="utf-8").splitlines()]
    codes = [c for c in codes if c and not c.startswith("#")]
    given = set(session.scalars(select(Reward.code).where(Reward.code.in_(codes))))
    return next((c for c in codes if c not in given), None)


def issue_rewards(
    session: Session, db: Database, settings: Settings, referral: Referral, now: datetime
) -> dict[str, str]:
    """Give each role its gift for this converted referral (once); returns the descriptions
    of the gifts that exist for it, by role."""
    program = settings.program
    if referral.flag is None:
        for role in ROLES:
            kind, amount, codes = _rule(program, role)
            if kind == "none":
                continue
            code = None
            if kind == "code":
                code = _next_code(session, settings.path(codes))
                if code is None:
                    session.add(
                        Alert(
                            kind="reward_codes_used_up",
                            message=f"no unused code left in {codes} for the {role} of "
                            f"referral {referral.id}; add codes, then give it by hand",
                            created_at=now,
                        )
                    )
                    log.error("reward_codes_used_up pool=%s referral=%s", codes, referral.id)
                    continue
            contact_id = referral.referrer_id if role == "referrer" else referral.friend_contact_id
            row = {
                "referral_id": referral.id,
                "contact_id": contact_id,
                "role": role,
                "kind": kind,
                "amount": amount if kind == "credit" else None,
                "code": code,
                "description": describe(kind, amount, code, program.currency),
                "issued_at": now,
            }
            insert_ignore(session, db, Reward, [row])
    given = session.scalars(select(Reward).where(Reward.referral_id == referral.id))
    return {r.role: r.description for r in given}
