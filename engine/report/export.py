"""The report as JSON (everything) or CSV (one table: steps, funnel or referrers)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from engine.report.rows import Report

COLUMNS = (
    "sequence",
    "step",
    "queued",
    "sent",
    "failed",
    "held",
    "cancelled",
    "bounced",
    "hard_bounced",
    "soft_bounced",
    "opened",
    "clicked",
    "replied",
    "reply_rate",
    "auto_replied",
    "unsubscribed",
    "ctr",
    # added with the metrics; the columns above keep their places
    "delivered",
    "opened_machine",
    "clicked_machine",
    "period",
    # added with complaints (migration 0006): after the period, so the columns above keep theirs
    "complained",
)

FUNNEL_COLUMNS = (
    "period",
    "asked",
    "visits",
    "machine_visits",
    "visit_rate",
    "referrals",
    "flagged",
    "referrals_per_visit",
    "converted",
    "conversion_rate",
    "value",
    "purchases",
    "revenue",
    "referred_purchases",
    "referral_rate",
    "referral_revenue",
    "customers_acquired",
    "cac",  # the program's figures: on the total row only
    "ltv",
)

REFERRER_COLUMNS = ("email", "referrals", "converted", "value")


def to_json(report: Report) -> str:
    """The whole report, as ``Report.as_dict`` has it, indented."""
    return json.dumps(report.as_dict(), indent=2)


CSV_TABLES = ("steps", "funnel", "referrers")


def to_csv(report: Report, table: str = "steps") -> str:
    """One table as CSV: ``steps`` (the step rows, as before), ``funnel`` (a ``total`` row
    with CAC and LTV, then one row per period) or ``referrers`` (the top referrers)."""
    data = report.as_dict()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")

    def cell(value: Any) -> Any:
        return "" if value is None else value

    columns: tuple[str, ...]
    if table == "steps":
        columns, entries = COLUMNS, data["steps"]
    elif table == "funnel":
        program = data["program"]
        total = {**data["referrals"], "period": "total", "cac": program["cac"]}
        columns = FUNNEL_COLUMNS
        entries = [{**total, "ltv": program["ltv"]["value"]}, *data["periods"]]
    elif table == "referrers":
        columns, entries = REFERRER_COLUMNS, data["referrals"]["top_referrers"]
    else:
        raise ValueError(f"table must be one of {', '.join(CSV_TABLES)}, not {table!r}")
    writer.writerow(columns)
    for entry in entries:
        writer.writerow([cell(entry.get(c)) for c in columns])
    return out.getvalue()
