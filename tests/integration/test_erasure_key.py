"""The erasure's suppression hash is keyed (HMAC, a key of its own in `meta` that never
rotates): an erased address cannot be checked against the suppression list without the key,
and re-imports stay refused, also for erasures made with the older unkeyed hash."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from sqlalchemy import select

from engine.records.privacy import ERASURE_KEY
from engine.store.models import Contact, Meta, Suppression
from tests.conftest import Project
from tests.support.scenario import contacts, setup

ROW = "{email},Ana,Lima,Lima Co,UTC,10,2026-01-01,2025-01-01,,en,customer"


def unkeyed(email: str) -> str:
    return "sha256:" + hashlib.sha256(email.encode()).hexdigest()


def test_erasure_hash_is_keyed_and_reimports_stay_refused(
    make_project: Callable[..., Project],
) -> None:
    program = setup(make_project(shipped=False))
    contacts(program, ROW.format(email="ana@example.com"), ROW.format(email="bo@example.com"))
    assert program.cli("contacts", "erase", "ana@example.com")[0] == 0
    engine = program.engine()
    with engine.db.session() as session:
        keys = session.scalars(select(Suppression.email)).all()
        secret = session.get(Meta, ERASURE_KEY)
    assert secret is not None and len(bytes.fromhex(secret.value)) == 32
    assert keys and all(k.startswith("hmac-sha256:") for k in keys), keys
    assert unkeyed("ana@example.com") not in keys
    assert secret.value not in engine.settings.tracking.secret
    # An erasure from before the key: its unkeyed hash still refuses a re-import.
    with engine.db.write() as session:
        bo = session.scalars(select(Contact).where(Contact.email == "bo@example.com")).one()
        bo.email = "erased-bo@erased.invalid"
        session.add(
            Suppression(email=unkeyed("bo@example.com"), reason="erased", created_at=bo.created_at)
        )
    assert program.cli("contacts", "erase", "nobody@example.com")[0] == 2  # the key stays
    with engine.db.session() as session:
        assert session.get(Meta, ERASURE_KEY).value == secret.value  # type: ignore[union-attr]
    contacts(program, ROW.format(email="ana@example.com"), ROW.format(email="bo@example.com"))
    with engine.db.session() as session:
        back = session.scalars(
            select(Contact).where(Contact.email.in_(["ana@example.com", "bo@example.com"]))
        ).all()
    assert len(back) == 2 and all(c.unsubscribed_at is not None for c in back)
    program.cli("tick")
    sent = {m.rcpt_tos[0] for m in program.sink.messages}
    assert not sent & {"ana@example.com", "bo@example.com"}, sent
    engine.close()
