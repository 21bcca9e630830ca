"""The report as a text table and sentences (the ``report`` command's default format)."""

from __future__ import annotations

from datetime import timedelta

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.report.figures import Report

# The step table's columns, in reading order (the CSV keeps its historical order).
REPORT_TABLE = (
    ("sequence", "sequence"),
    ("step", "step"),
    ("queued", "queued"),
    ("sent", "sent"),
    ("failed", "failed"),
    ("held", "held"),
    ("cancelled", "cancelled"),
    ("delivered", "delivered"),
    ("bounced", "bounced"),
    ("hard_bounced", "hard"),
    ("soft_bounced", "soft"),
    ("opened", "opened"),
    ("opened_machine", "opened (machine)"),
    ("clicked", "clicked"),
    ("clicked_machine", "clicked (machine)"),
    ("ctr", "ctr"),
    ("replied", "replied"),
    ("reply_rate", "reply rate"),
    ("auto_replied", "auto-replied"),
    ("unsubscribed", "unsubscribed"),
    ("complained", "complained"),
)


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.0%}"


def print_report(data: Report, currency: str, console: Console) -> None:
    """The report as tables and sentences."""

    def say(text: str) -> None:
        console.print(text, highlight=False, markup=False)

    def money(amount: float | None) -> str:
        return "-" if amount is None else f"{amount:,.2f} {currency}"

    for alert in data.alerts:
        console.print(f"[bold red]ALERT[/bold red] {escape(alert)}", highlight=False)
    scope = ", ".join(
        part
        for part in (
            f"by {data.period}" if data.period else "",
            f"since {data.window.since:%Y-%m-%d}" if data.window.since else "",
            f"until {data.window.until - timedelta(days=1):%Y-%m-%d}" if data.window.until else "",
        )
        if part
    )
    columns = ((("period", "period"),) if data.period else ()) + REPORT_TABLE
    table = Table(title="per sequence and step" + (f" ({scope})" if scope else ""))
    for key, title in columns:
        table.add_column(
            title, justify="left" if key in {"period", "sequence", "step"} else "right"
        )
    for row in data.as_dict()["steps"]:
        for rate in ("ctr", "reply_rate"):
            row[rate] = _percent(row[rate])
        table.add_row(*(str(row[key]) for key, _ in columns))
    console.print(table)
    f = data.funnel
    rates = {k: _percent(v) for k, v in f.as_dict().items() if k.endswith(("_rate", "_visit"))}
    say(
        f"referral funnel: asked {f.asked} -> visits {f.visits} ({rates['visit_rate']}) -> "
        f"referrals {f.referrals} ({rates['referrals_per_visit']}; {f.flagged} flagged) -> "
        f"converted {f.converted} ({rates['conversion_rate']}), value {money(f.value)}; "
        f"machine visits {f.machine_visits}"
    )
    if data.periods:
        by_period = Table(title=f"referral funnel by {data.period}")
        names = ("asked", "visits", "referrals", "flagged", "converted", "purchases", "referred")
        for name in ("period", *names, "referral rate", "referral revenue", "customers acquired"):
            by_period.add_column(name, justify="left" if name == "period" else "right")
        for p in data.periods:
            by_period.add_row(
                str(p.period),
                *(str(n) for n in (p.asked, p.visits, p.referrals, p.flagged, p.converted)),
                str(p.purchases),
                str(p.referred_purchases),
                _percent(p.as_dict()["referral_rate"]),
                money(p.referral_revenue),
                str(p.customers_acquired),
            )
        console.print(by_period)
    say(
        f"purchases {f.purchases} ({money(f.revenue)}), referred {f.referred_purchases} "
        f"(referral rate {rates['referral_rate']}); "
        f"revenue from referrals {money(f.referral_revenue)}"
    )
    cac = (
        f"CAC {money(data.cac)} (spend {money(data.acquisition_spend)})"
        if data.acquisition_spend
        else "CAC - (no program.acquisition_spend)"
    )
    say(f"customers acquired {f.customers_acquired}; {cac}")
    ltv = data.ltv
    frequency = "-" if ltv.purchase_frequency is None else f"{ltv.purchase_frequency:.2f}"
    lifespan = "-" if ltv.average_lifespan_years is None else f"{ltv.average_lifespan_years:.2f}"
    say(
        f"LTV {money(ltv.value)} = average purchase {money(ltv.average_purchase_value)} x "
        f"{frequency} purchases a year x {lifespan} years ({ltv.customers} customers)"
    )
    if data.top_referrers:
        top = Table(title="top referrers")
        for name in ("referrer", "referrals", "converted", "value"):
            top.add_column(name, justify="left" if name == "referrer" else "right")
        for t in data.top_referrers:
            top.add_row(t.email, str(t.referrals), str(t.converted), money(t.value))
        console.print(top)
