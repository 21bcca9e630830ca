"""What a report holds: step rows, funnel rows, the LTV inputs, the top referrers, and the
whole ``Report`` as the dictionary the JSON and CSV outputs are made from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from engine.report.window import Window


@dataclass
class StepRow:
    sequence: str
    step: str
    queued: int = 0
    sent: int = 0
    failed: int = 0
    held: int = 0
    cancelled: int = 0
    bounced: int = 0
    opened: int = 0  # by a person: image proxies and scanners are in ``opened_machine``
    clicked: int = 0  # by a person
    replied: int = 0
    unsubscribed: int = 0
    auto_replied: int = 0  # out-of-office answers (they do not count as replies)
    hard_bounced: int = 0  # of ``bounced``: the address is gone (suppressed)
    soft_bounced: int = 0  # of ``bounced``: mailbox full, delayed, refused for now
    opened_machine: int = 0  # emails with an open by an image proxy (Apple MPP, Gmail)
    clicked_machine: int = 0  # emails with a click by a link scanner
    complained: int = 0  # emails their recipient marked as spam (feedback-loop reports)
    period: str | None = None  # "2026-W10", "2026-03"; None: the whole window

    @property
    def delivered(self) -> int:
        """Emails sent minus emails that bounced."""
        return self.sent - self.bounced

    @property
    def ctr(self) -> float | None:
        """Click-through rate = emails clicked / emails opened, both by a person."""
        return self.clicked / self.opened if self.opened else None

    @property
    def reply_rate(self) -> float | None:
        """Response rate = emails replied to / emails sent."""
        return self.replied / self.sent if self.sent else None


def rate(part: float, whole: float) -> float | None:
    """``part / whole``; None when ``whole`` is 0."""
    return part / whole if whole else None


@dataclass
class FunnelRow:
    """The referral funnel and the purchases of one period (or of the whole window)."""

    period: str | None = None
    asked: int = 0  # contacts sent a referral-ask email
    visits: int = 0  # referral page visits by people
    machine_visits: int = 0  # by link scanners and previews, not in ``visits``
    referrals: int = 0  # introductions recorded (not the unconfirmed "detected" ones)
    flagged: int = 0  # of ``referrals``: self-referral, duplicate, existing customer
    converted: int = 0
    value: float = 0.0  # of the converted referrals
    purchases: int = 0
    revenue: float = 0.0  # of every purchase
    referred_purchases: int = 0
    referral_revenue: float = 0.0  # referred purchases + converted value without a purchase
    customers_acquired: int = 0  # contacts whose customer_since falls in the period

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "visit_rate": rate(self.visits, self.asked),
            "referrals_per_visit": rate(self.referrals, self.visits),
            "conversion_rate": rate(self.converted, self.referrals),
            "referral_rate": rate(self.referred_purchases, self.purchases),
        }


@dataclass
class Ltv:
    """Lifetime value = average purchase value x purchase frequency x average lifespan."""

    customers: int = 0  # contacts with a purchase in the window
    purchases: int = 0  # theirs
    revenue: float = 0.0  # theirs
    customer_years: float = 0.0  # sum of their lifespans

    @property
    def average_purchase_value(self) -> float | None:
        return rate(self.revenue, self.purchases)

    @property
    def purchase_frequency(self) -> float | None:
        """Purchases per customer per year."""
        return rate(self.purchases, self.customer_years)

    @property
    def average_lifespan_years(self) -> float | None:
        return rate(self.customer_years, self.customers)

    @property
    def value(self) -> float | None:
        aov, frequency = self.average_purchase_value, self.purchase_frequency
        lifespan = self.average_lifespan_years
        if aov is None or frequency is None or lifespan is None:
            return None
        return aov * frequency * lifespan

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "average_purchase_value": self.average_purchase_value,
            "purchase_frequency": self.purchase_frequency,
            "average_lifespan_years": self.average_lifespan_years,
            "value": self.value,
        }


@dataclass(frozen=True)
class TopReferrer:
    email: str
    referrals: int  # unflagged introductions made in the window
    converted: int  # unflagged referrals converted in the window
    value: float  # of those conversions


@dataclass
class Report:
    steps: list[StepRow] = field(default_factory=list)
    funnel: FunnelRow = field(default_factory=FunnelRow)
    periods: list[FunnelRow] = field(default_factory=list)  # with a period only
    period: str | None = None  # week | month
    window: Window = field(default_factory=Window)
    acquisition_spend: float = 0.0
    ltv: Ltv = field(default_factory=Ltv)
    top_referrers: list[TopReferrer] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)  # what a person must look at now

    @property
    def cac(self) -> float | None:
        """Acquisition spend / customers acquired in the window (None: no spend given)."""
        if not self.acquisition_spend:
            return None
        return rate(self.acquisition_spend, self.funnel.customers_acquired)

    def as_dict(self) -> dict[str, Any]:
        funnel = self.funnel.as_dict()
        return {
            "alerts": self.alerts,
            "period": self.period,
            "since": day(self.window.since),
            "until": day(self.window.until - timedelta(days=1) if self.window.until else None),
            "steps": [
                {**asdict(s), "delivered": s.delivered, "ctr": s.ctr, "reply_rate": s.reply_rate}
                for s in self.steps
            ],
            "referrals": {
                **{k: v for k, v in funnel.items() if k != "period"},
                "top_referrers": [asdict(t) for t in self.top_referrers],
            },
            "program": {
                "acquisition_spend": self.acquisition_spend,
                "customers_acquired": self.funnel.customers_acquired,
                "cac": self.cac,
                "ltv": self.ltv.as_dict(),
            },
            "periods": [p.as_dict() for p in self.periods],
        }


def day(moment: datetime | None) -> str | None:
    """The UTC day of ``moment`` as ISO text (None stays None)."""
    return moment.date().isoformat() if moment else None
