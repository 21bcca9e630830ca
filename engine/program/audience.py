"""Who may enter a sequence, and why not: pure functions of a contact, its history and the time.

Every decision names the rule that decided it and the values it looked at, so `explain` can
show a marketer exactly why someone was or was not asked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from engine.base.locale import normalize as normalize_locale
from engine.program.sequences import Audience, Trigger, nps_class


class ContactLike(Protocol):
    email: str
    kind: str
    nps_score: int | None
    nps_at: datetime | None
    customer_since: datetime | None
    last_complaint_at: datetime | None
    unsubscribed_at: datetime | None
    created_at: datetime
    fields: dict[str, Any]


@dataclass(frozen=True)
class PastEnrollment:
    """What eligibility needs to know of a contact's earlier runs through the sequence."""

    status: str
    started_at: datetime


@dataclass(frozen=True)
class Decision:
    """The outcome of one eligibility check."""

    eligible: bool
    rule: str  # the rule that decided: "eligible", "nps", "min_score", "customer_for_at_least", ...
    detail: str  # the values behind it, for people
    recheck_at: datetime | None = None  # when the answer could change by time alone

    def __str__(self) -> str:
        return f"{self.rule}: {self.detail}"


def _days(delta: timedelta) -> str:
    days = delta.total_seconds() / 86400
    return f"{days:g}d"


def field_value(contact: ContactLike, name: str) -> Any:
    """A standard attribute or a custom CSV field of the contact (None when absent); a locale
    in its normal form, whatever form an older import stored it in."""
    if name == "locale":
        return normalize_locale(getattr(contact, "locale", None))
    if name in {
        "email",
        "kind",
        "nps_score",
        "first_name",
        "last_name",
        "company",
        "locale",
        "timezone",
    }:
        return getattr(contact, name, None)
    return (contact.fields or {}).get(name)


def _where_mismatch(
    where: Iterable[tuple[str, tuple[Any, ...]]], lookup: Any
) -> tuple[str, Any, tuple[Any, ...]] | None:
    for name, allowed in where:
        value = lookup(name)
        if value not in allowed and str(value) not in {str(a) for a in allowed}:
            return name, value, allowed
    return None


def blocked(contact: ContactLike, suppressed: bool) -> Decision | None:
    """The rules that stop every email, whatever the sequence says."""
    if contact.unsubscribed_at is not None:
        return Decision(
            False, "unsubscribed", f"unsubscribed at {contact.unsubscribed_at:%Y-%m-%d %H:%M}"
        )
    if suppressed:
        return Decision(False, "suppressed", f"{contact.email} is on the suppression list")
    return None


def check_audience(
    contact: ContactLike,
    audience: Audience,
    now: datetime,
    *,
    suppressed: bool = False,
    active: bool = False,
    last: PastEnrollment | None = None,
    entering: bool = True,
) -> Decision:
    """Decide whether ``contact`` may enter a sequence with this audience at ``now``.

    With ``entering=False`` only the rules about who the contact is (kind, fields, score,
    a recent complaint) apply: the check before each later step of a sequence already begun.
    """
    if (stop := blocked(contact, suppressed)) is not None:
        return stop
    if (refused := _who_is_not(contact, audience, now)) is not None:
        return refused
    klass = nps_class(contact.nps_score)
    if not entering:
        # Already in the sequence: only who the contact is matters, not when they entered.
        return Decision(True, "still_eligible", f"{klass}, still matches the audience")
    if (refused := _not_yet(contact, audience, now, active=active, last=last)) is not None:
        return refused
    return Decision(True, "eligible", f"{klass}, all audience rules pass")


def _who_is_not(contact: ContactLike, audience: Audience, now: datetime) -> Decision | None:
    """The rule about who the contact is (kind, fields, score, a recent complaint) that keeps
    them out, if any."""
    if audience.kind != "any" and contact.kind != audience.kind:
        return Decision(
            False, "kind", f"contact is a {contact.kind}, sequence wants {audience.kind}"
        )
    if (miss := _where_mismatch(audience.where, lambda n: field_value(contact, n))) is not None:
        name, value, allowed = miss
        return Decision(
            False, f"where.{name}", f"{name} is {value!r}, wanted one of {list(allowed)}"
        )
    score = contact.nps_score
    if audience.min_score is not None and score is not None and score < audience.min_score:
        return Decision(False, "min_score", f"NPS score {score} is below {audience.min_score}")
    klass = nps_class(score)
    if klass not in audience.nps:
        shown = "no score" if score is None else f"score {score}"
        return Decision(
            False, "nps", f"{klass} ({shown}), sequence wants {', '.join(sorted(audience.nps))}"
        )
    if contact.last_complaint_at is not None:
        calm = contact.last_complaint_at + audience.no_complaint_within
        if now < calm:
            return Decision(
                False,
                "no_complaint_within",
                f"complained {contact.last_complaint_at:%Y-%m-%d}, waits "
                f"{_days(audience.no_complaint_within)}: eligible from {calm:%Y-%m-%d %H:%M}",
                calm,
            )
    return None


def _not_yet(
    contact: ContactLike,
    audience: Audience,
    now: datetime,
    *,
    active: bool,
    last: PastEnrollment | None,
) -> Decision | None:
    """The rule about timing (a fresh NPS answer, a new customer, an earlier entry) that keeps
    the contact out for now, if any."""
    if audience.nps_older_than is not None and contact.nps_at is not None:
        fresh_until = contact.nps_at + audience.nps_older_than
        if now < fresh_until:
            return Decision(
                False,
                "nps_older_than",
                f"answered NPS on {contact.nps_at:%Y-%m-%d}, asks again after "
                f"{_days(audience.nps_older_than)}: from {fresh_until:%Y-%m-%d %H:%M}",
                fresh_until,
            )
    since = contact.customer_since or contact.created_at
    ready = since + audience.customer_for_at_least
    if now < ready:
        return Decision(
            False,
            "customer_for_at_least",
            f"customer since {since:%Y-%m-%d}, needs {_days(audience.customer_for_at_least)}: "
            f"eligible from {ready:%Y-%m-%d %H:%M}",
            ready,
        )
    if active:
        return Decision(False, "enrolled", "already in this sequence")
    if last is not None:
        if audience.reenter_after is None:
            return Decision(False, "reenter_after", f"was in it ({last.status}); re-entry is off")
        again = last.started_at + audience.reenter_after
        if now < again:
            return Decision(
                False,
                "reenter_after",
                f"last entered {last.started_at:%Y-%m-%d}, re-enters after "
                f"{_days(audience.reenter_after)}: from {again:%Y-%m-%d %H:%M}",
                again,
            )
    return None


def check_trigger(
    contact: ContactLike, trigger: Trigger, event_type: str, data: dict[str, Any]
) -> Decision:
    """Decide whether an event starts a triggered sequence for its contact.

    An NPS answer that a newer one replaced (both processed in one pass) starts nothing: the
    contact is routed on their latest answer only.
    """
    if event_type != trigger.event:
        return Decision(False, "trigger", f"starts on {trigger.event}")
    score = data.get("score")
    if isinstance(score, int) and not isinstance(score, bool) and score != contact.nps_score:
        return Decision(False, "trigger.nps", f"answer {score} was replaced by {contact.nps_score}")
    if (lapsed := trigger_lapsed(contact, trigger)) is not None:
        return lapsed
    if (miss := _where_mismatch(trigger.where, data.get)) is not None:
        name, value, allowed = miss
        return Decision(
            False, f"trigger.where.{name}", f"{name} is {value!r}, wanted {list(allowed)}"
        )
    return Decision(True, "trigger", f"{event_type} happened")


def trigger_lapsed(contact: ContactLike, trigger: Trigger | None) -> Decision | None:
    """Why a run started by ``trigger`` must stop: its NPS filter no longer holds (a promoter
    who answers the survey again with a 4 gets no further asks), else None."""
    if trigger is not None and trigger.nps is not None:
        klass = nps_class(contact.nps_score)
        if klass not in trigger.nps:
            return Decision(
                False, "trigger.nps", f"{klass}, trigger wants {', '.join(sorted(trigger.nps))}"
            )
    return None
