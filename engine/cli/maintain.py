"""The commands that keep a running program healthy: its status, pauses lifted, held emails
retried, the reply mailbox read once, webhook deliveries listed and replayed."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from engine.base.errors import SettingsError
from engine.cli.commands import EXIT_INVALID, EXIT_OK, say
from engine.records.health import health, lines
from engine.records.pauses import PauseKind, lift
from engine.wiring import Engine


def retry_held(engine: Engine, sequence: str | None, console: Console) -> int:
    from engine.records.outbox import retry_held as requeue

    count = requeue(engine.db, engine.clock.now(), sequence=sequence)
    console.print(
        f"requeued {count} held email(s); they go out on the next tick",
        highlight=False,
        markup=False,
    )
    return EXIT_OK


async def replies_poll(engine: Engine, console: Console) -> int:
    """One pass over the reply mailbox: replies, auto-replies and bounces become events."""
    from engine.inbound.replies.poller import poll_once

    stats = await poll_once(engine.replies())
    console.print(f"replies poll: {stats.summary()}", highlight=False, markup=False)
    return EXIT_OK


def _shown_url(url: str) -> str:
    """A URL without its query, which may carry a receiver's token: ``https://h/p?…``."""
    base, sep, _ = url.partition("?")
    return base + ("?…" if sep else "")


def webhooks_list(engine: Engine, status: str | None, limit: int, console: Console) -> int:
    """Webhook deliveries, newest first: event, URL, attempts, last answer, next try."""
    from engine.outbound.webhooks import list_deliveries

    if limit < 1:
        raise SettingsError("--limit", "must be at least 1")
    rows, total = list_deliveries(engine.db, status=status, limit=limit)
    table = Table(title=f"webhook deliveries{f' ({status})' if status else ''}, newest first")
    for col in ("id", "event", "url", "status", "attempts", "last status / error", "next try"):
        table.add_column(col, justify="right" if col in {"id", "attempts"} else "left")
    for d in rows:
        last = d.last_error or (str(d.last_status) if d.last_status is not None else "-")
        table.add_row(
            str(d.id),
            f"{d.event_type} #{d.event_id}",
            _shown_url(d.url),
            d.status,
            str(d.attempts),
            last,
            f"{d.next_at:%Y-%m-%d %H:%M:%S}" if d.status == "pending" else "-",
        )
    console.print(table, markup=False, highlight=False)
    console.print(f"{len(rows)} of {total} shown", highlight=False, markup=False)
    return EXIT_OK


def webhooks_replay(
    engine: Engine, ids: list[int] | None, all_failed: bool, console: Console
) -> int:
    """Failed deliveries (``ids``, or all with ``all_failed``) back to pending, due now."""
    from engine.outbound.webhooks import replay_failed

    urls = engine.settings.webhooks.urls
    result = replay_failed(engine.db, engine.clock.now(), urls, ids=None if all_failed else ids)
    console.print(
        f"replayed {len(result.replayed)} failed delivery(ies), attempts reset; "
        "they go out on the next pass",
        highlight=False,
        markup=False,
    )
    if result.elsewhere:
        console.print(
            f"  {result.elsewhere} failed delivery(ies) left as they are: "
            "their URL is no longer in webhooks.urls",
            highlight=False,
            markup=False,
        )
    for problem in result.problems:
        console.print(f"  {problem}", highlight=False, markup=False)
    return EXIT_INVALID if result.problems else EXIT_OK


def sending_resume(engine: Engine, kind: str | None, console: Console) -> int:
    """Lift every pause of sending in force (or those of ``kind``), say which, record it."""
    if kind is not None and kind not in set(PauseKind):
        raise SettingsError("--kind", f"{kind!r} is not one of {', '.join(PauseKind)}")
    with engine.db.write() as session:
        lifted = lift(session, engine.clock.now(), kind)
    for pause in lifted:
        say(console, f"lifted: {pause.describe()}")
    say(console, f"{len(lifted)} pause(s) lifted; sending resumes on the next tick")
    return EXIT_OK


def status(engine: Engine, console: Console) -> int:
    """Health at a glance; exit 1 when a pause or failures need a person (README "status")."""
    now = engine.clock.now()
    report = health(engine.db, engine.settings, now)
    for line in lines(report, now):
        say(console, line)
    attention = report.needs_attention
    say(console, "needs attention: " + "; ".join(attention) if attention else "healthy")
    return EXIT_INVALID if attention else EXIT_OK
