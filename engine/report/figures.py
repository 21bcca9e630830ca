"""The numbers a referral program is run by: per step delivery and engagement, the referral
funnel, referral rate, revenue, CAC, LTV and top referrers (README "Metrics" defines each).

Every figure is aggregated in the database (GROUP BY over covering indexes, see
``ix_messages_report``, and ``engine.store.engagement`` for what each email's row knows of its
opens, clicks, replies, bounces and complaints); no query returns a row per email or event.

The figures are counted in ``steps``, ``funnel`` and ``program`` over a ``window``; ``rows``
holds them, ``export`` writes them as JSON or CSV (``table`` as text).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.program.sequences import SendStep, Sequence
from engine.records.pauses import pauses_in_force
from engine.report.export import to_csv, to_json
from engine.report.funnel import funnel_rows
from engine.report.program import ltv, top_referrers
from engine.report.rows import Report, StepRow
from engine.report.steps import step_rows
from engine.report.window import PERIODS, Dialect, Window, label
from engine.store.db import Database
from engine.store.models import Alert

# Report, build_report, to_csv and to_json stay importable from here.
__all__ = ["Report", "build_report", "to_csv", "to_json"]

ALERT_DAYS = timedelta(days=30)  # how long an alert without a pause stays in the report


def build_report(
    db: Database,
    sequences: dict[str, Sequence],
    now: datetime,
    *,
    period: str | None = None,
    since: date | None = None,
    until: date | None = None,
    acquisition_spend: float = 0.0,
) -> Report:
    """Count outbox states, engagement, the referral funnel and the program's figures.

    ``since``/``until``: whole UTC days, both inclusive. ``period``: ``week`` (ISO) or
    ``month`` breaks the step rows and the funnel down by the time of each send or event.
    """
    if period is not None and period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}, not {period!r}")
    window = Window.of_days(since, until)
    sql = Dialect(db)
    report = Report(period=period, window=window, acquisition_spend=acquisition_spend)
    ask_steps = [
        (s.id, step.id)
        for s in sequences.values()
        for step in s.steps
        if isinstance(step, SendStep) and step.referral_ask
    ]
    with db.session() as session:
        report.alerts = _alerts(session, now)
        rows = step_rows(session, window, period)
        report.funnel = funnel_rows(session, sql, window, None, ask_steps)[None]
        if period is not None:
            by_key = funnel_rows(session, sql, window, period, ask_steps)
            report.periods = sorted(by_key.values(), key=lambda r: str(r.period))
            for funnel_row in report.periods:
                funnel_row.period = label(str(funnel_row.period), period)
        report.ltv = ltv(session, sql, window, now)
        report.top_referrers = top_referrers(session, window)
    order = {sid: i for i, sid in enumerate(sorted(sequences))}

    def position(row: StepRow) -> tuple[str, int, int]:
        seq = sequences.get(row.sequence)
        idx = next((i for i, s in enumerate(seq.steps) if s.id == row.step), 99) if seq else 99
        return row.period or "", order.get(row.sequence, 999), idx

    report.steps = sorted(rows.values(), key=position)
    if period is not None:
        for row in report.steps:
            row.period = label(str(row.period), period)
    return report


def _alerts(session: Session, now: datetime) -> list[str]:
    """Each pause of sending in force (kind, reason, until when), then what else a person
    should act on from the last 30 days."""
    paused = [f"sending paused: {p.describe()}" for p in pauses_in_force(session, now)]
    return paused + list(
        session.scalars(
            select(Alert.message)
            .where(Alert.pause_until.is_(None), Alert.created_at > now - ALERT_DAYS)
            .order_by(Alert.created_at)
        )
    )
