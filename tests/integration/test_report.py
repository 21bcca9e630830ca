"""`report` metrics against numbers worked out by hand on a small program, on SQLite and
PostgreSQL: people and machines apart, the referral funnel, referral rate, revenue, CAC, LTV,
top referrers, per week and month, --since/--until, and the JSON, CSV and table shapes.

The program (times UTC; the report runs on Monday 2026-03-09 10:00):

=======  ===================================================================================
emails   ask/ask to ann (Thu 02-26), bob (Sun 03-01), cid and dan (Tue 03-03); ask/reminder
         to ann (03-03) and one queued for bob; thanks/thanks to ann (03-04)
ann ask  opened by a person 02-26 and again 03-02, by a proxy 02-26; clicked by a person
         02-27, by a scanner 02-26
bob ask  opened and clicked by machines only (03-01), marked as spam by bob (03-02)
cid ask  opened 03-03, replied and unsubscribed 03-04; dan's ask hard-bounced 03-03
reminder opened and clicked by ann 03-03
visits   ann's referral page 02-27 and 03-03 (people) and 03-03 (a scanner); bob's 03-01
refs     ann->fay 02-27 converted 03-03 value 100 (a purchase of 120 carries it); ann->gus
         03-02 converted 03-04 value 50 (no purchase); bob->hal 03-02; cid->fay 03-03
         flagged duplicate; dan->ivy 03-03 "detected" (not yet confirmed: not counted)
buys     ann 200 (02-26) and 100 (03-04), bob 80 (03-02), fay 120 (03-03, referred by ann),
         an unknown buyer 50 (02-27)
since    ann customer since 2025-03-09 10:00, bob 2025-09-09 10:00, fay 2026-03-03 10:00
=======  ===================================================================================
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from engine.base.errors import SettingsError
from engine.program.settings import load_settings
from engine.store.models import Contact, Enrollment, Event, Message, Purchase, Referral
from tests.conftest import MONDAY, Project
from tests.support.scenario import setup

NOW = MONDAY + timedelta(days=7)  # Monday 2026-03-09 10:00 UTC
SPEND = "[program]\nacquisition_spend = 600\n"


def at(day: str, hour: int = 10) -> datetime:
    """``at("02-26")`` -> 2026-02-26 10:00 UTC (``"2025-03-09"``: that year)."""
    full = day if day.count("-") == 2 else f"2026-{day}"
    return datetime.fromisoformat(full).replace(hour=hour, tzinfo=UTC)


def build_program(project: Project) -> Project:
    """Write the program of the module docstring straight into the store."""
    setup(project)  # the ask (referral_ask on both steps), thanks and reward sequences
    engine = project.engine()
    ids = count(1)
    with engine.db.write() as s:
        people: dict[str, Contact] = {}
        for name, since in [
            ("ann", at("2025-03-09")),
            ("bob", at("2025-09-09")),
            ("cid", None),
            ("dan", None),
            ("fay", at("03-03")),
        ]:
            people[name] = Contact(
                email=f"{name}@example.com",
                first_name=name.title(),
                referral_code=f"code-{name}",
                customer_since=since,
                created_at=at("2025-01-01"),
                updated_at=at("2025-01-01"),
            )
        s.add_all(people.values())
        s.flush()

        runs: dict[tuple[str, str], Enrollment] = {}

        def email(who: str, seq: str, step: str, sent: str | None) -> Message:
            run = runs.get((who, seq))
            if run is None:
                run = runs[(who, seq)] = Enrollment(
                    contact_id=people[who].id,
                    sequence_id=seq,
                    key="cycle-1",
                    started_at=at("02-20"),
                )
                s.add(run)
                s.flush()
            n = next(ids)
            message = Message(
                enrollment_id=run.id,
                contact_id=people[who].id,
                sequence_id=seq,
                step_id=step,
                message_id=f"<m{n}@acme.example>",
                ref=n.to_bytes(16, "big"),
                status="sent" if sent else "queued",
                due_at=at(sent or "03-03"),
                created_at=at(sent or "03-03"),
                sent_at=at(sent) if sent else None,
            )
            s.add(message)
            s.flush()
            return message

        def event(
            type_: str, day: str, *, on: Message | None = None, who: str | None = None, **kw: Any
        ) -> None:
            contact = on.contact_id if on else people[str(who)].id
            s.add(
                Event(
                    type=type_,
                    contact_id=contact,
                    message_id=on.id if on else None,
                    sequence_id=on.sequence_id if on else None,
                    step_id=on.step_id if on else None,
                    occurred_at=at(day, kw.pop("hour", 10)),
                    data=kw.pop("data", {}),
                    machine=kw.pop("machine", False),
                    handled_at=NOW,
                )
            )

        ann = email("ann", "ask", "ask", "02-26")
        bob = email("bob", "ask", "ask", "03-01")
        cid = email("cid", "ask", "ask", "03-03")
        dan = email("dan", "ask", "ask", "03-03")
        reminder = email("ann", "ask", "reminder", "03-03")
        email("bob", "ask", "reminder", None)
        email("ann", "thanks", "thanks", "03-04")
        event("opened", "02-26", on=ann)
        event("opened", "02-26", on=ann, hour=11)  # the same email again: still one
        event("opened", "03-02", on=ann)
        event("opened", "02-26", on=ann, machine=True)
        event("clicked", "02-27", on=ann)
        event("clicked", "02-26", on=ann, machine=True)
        event("opened", "03-01", on=bob, machine=True)
        event("clicked", "03-01", on=bob, machine=True)
        event("complained", "03-02", on=bob)
        event("opened", "03-03", on=cid)
        event("replied", "03-04", on=cid)
        event("unsubscribed", "03-04", on=cid)
        event("bounced", "03-03", on=dan, data={"hard": True})
        event("opened", "03-03", on=reminder)
        event("clicked", "03-03", on=reminder)
        event("referral.visited", "02-27", who="ann")
        event("referral.visited", "03-03", who="ann")
        event("referral.visited", "03-03", who="ann", machine=True)
        event("referral.visited", "03-01", who="bob")

        def referral(who: str, friend: str, day: str, **kw: Any) -> Referral:
            r = Referral(
                referrer_id=people[who].id,
                friend_email=f"{friend}@example.com",
                created_at=at(day),
                status=kw.get("status", "introduced"),
                value=kw.get("value"),
                converted_at=kw.get("converted_at"),
                flag=kw.get("flag"),
            )
            s.add(r)
            s.flush()
            return r

        fay = referral(
            "ann", "fay", "02-27", status="converted", value=Decimal(100), converted_at=at("03-03")
        )
        referral(
            "ann", "gus", "03-02", status="converted", value=Decimal(50), converted_at=at("03-04")
        )
        referral("bob", "hal", "03-02")
        referral("cid", "fay", "03-03", flag="duplicate")
        referral("dan", "ivy", "03-03", status="detected")
        for n, (who, amount, day, ref) in enumerate(
            [
                ("ann", 200, "02-26", None),
                ("ann", 100, "03-04", None),
                ("bob", 80, "03-02", None),
                ("fay", 120, "03-03", fay.id),
                (None, 50, "02-27", None),
            ]
        ):
            s.add(
                Purchase(
                    external_id=f"order-{n}",
                    contact_id=people[who].id if who else None,
                    referral_id=ref,
                    amount=Decimal(amount),
                    currency="USD",
                    occurred_at=at(day),
                    source="import",
                    created_at=at(day),
                )
            )
    engine.close()
    return project


@pytest.fixture
def program(make_project: Callable[..., Project]) -> Project:
    project = make_project(shipped=False, extra=SPEND)
    project.clock.advance(NOW - project.clock.now())
    return build_program(project)


def report(program: Project, *args: str) -> dict[str, Any]:
    code, out = program.cli("report", "--format", "json", *args)
    assert code == 0, out
    return json.loads(out)


def steps(data: dict[str, Any]) -> dict[tuple[str | None, str, str], dict[str, Any]]:
    return {(s["period"], s["sequence"], s["step"]): s for s in data["steps"]}


def test_opens_and_clicks_by_people_and_machines_are_counted_apart(program: Project) -> None:
    rows = steps(report(program))
    ask = rows[(None, "ask", "ask")]
    assert {k: ask[k] for k in ("sent", "bounced", "hard_bounced", "soft_bounced")} == {
        "sent": 4,
        "bounced": 1,
        "hard_bounced": 1,
        "soft_bounced": 0,
    }
    assert ask["delivered"] == 3
    # ann and cid opened (ann's three opens are one email); ann's and bob's by proxies
    assert (ask["opened"], ask["opened_machine"]) == (2, 2)
    # only ann clicked; scanners "clicked" ann's and bob's
    assert (ask["clicked"], ask["clicked_machine"]) == (1, 2)
    assert ask["ctr"] == 0.5  # 1 clicked / 2 opened, people only
    assert (ask["replied"], ask["unsubscribed"], ask["reply_rate"]) == (1, 1, 0.25)
    assert ask["complained"] == 1  # bob's
    reminder = rows[(None, "ask", "reminder")]
    assert (reminder["sent"], reminder["queued"], reminder["delivered"]) == (1, 1, 1)
    assert reminder["complained"] == 0
    assert (reminder["opened"], reminder["clicked"], reminder["ctr"]) == (1, 1, 1.0)
    thanks = rows[(None, "thanks", "thanks")]
    assert (thanks["sent"], thanks["opened"], thanks["ctr"]) == (1, 0, None)


def test_the_funnel_runs_from_asks_through_visits_to_conversions(program: Project) -> None:
    funnel = report(program)["referrals"]
    # ann, bob, cid, dan were sent an ask (ann twice: the reminder is an ask too)
    assert funnel["asked"] == 4
    assert (funnel["visits"], funnel["machine_visits"]) == (3, 1)
    # dan's "detected" introduction awaits review: not a referral yet
    assert (funnel["referrals"], funnel["flagged"], funnel["converted"]) == (4, 1, 2)
    assert funnel["visit_rate"] == 0.75  # 3 visits / 4 asked
    assert funnel["referrals_per_visit"] == pytest.approx(4 / 3)
    assert funnel["conversion_rate"] == 0.5  # 2 converted / 4 referrals
    assert funnel["value"] == 150.0


def test_referral_rate_revenue_cac_and_ltv(program: Project) -> None:
    data = report(program)
    funnel = data["referrals"]
    assert (funnel["purchases"], funnel["revenue"]) == (5, 550.0)
    assert (funnel["referred_purchases"], funnel["referral_rate"]) == (1, 0.2)
    # fay's purchase (120; her referral's value of 100 is that purchase) + gus's value (50)
    assert funnel["referral_revenue"] == 170.0
    program_figures = data["program"]
    # ann, bob and fay have a customer_since: 600 / 3
    assert program_figures["customers_acquired"] == 3
    assert (program_figures["acquisition_spend"], program_figures["cac"]) == (600.0, 200.0)
    ltv = program_figures["ltv"]
    # Known buyers ann (300 in 2), bob (80), fay (120); customers for 365, 181 and 6 days.
    years = (365 + 181 + 6) / 365.25
    assert (ltv["customers"], ltv["purchases"], ltv["revenue"]) == (3, 4, 500.0)
    assert ltv["customer_years"] == pytest.approx(years)
    assert ltv["average_purchase_value"] == 125.0
    assert ltv["purchase_frequency"] == pytest.approx(4 / years)
    assert ltv["average_lifespan_years"] == pytest.approx(years / 3)
    assert ltv["value"] == pytest.approx(500 / 3)


def test_top_referrers_rank_conversions_then_referrals(program: Project) -> None:
    top = report(program)["referrals"]["top_referrers"]
    # cid's only introduction is flagged and dan's unconfirmed: neither ranks
    assert top == [
        {"email": "ann@example.com", "referrals": 2, "converted": 2, "value": 150.0},
        {"email": "bob@example.com", "referrals": 1, "converted": 0, "value": 0.0},
    ]


def test_by_week_emails_fall_in_the_iso_week_they_were_sent_with_what_they_got(
    program: Project,
) -> None:
    data = report(program, "--period", "week")
    assert data["period"] == "week"
    rows = steps(data)
    w09, w10 = rows[("2026-W09", "ask", "ask")], rows[("2026-W10", "ask", "ask")]
    assert (w09["sent"], w09["opened"], w09["opened_machine"], w09["clicked"]) == (2, 1, 2, 1)
    assert (w09["clicked_machine"], w09["bounced"], w09["ctr"]) == (2, 0, 1.0)
    # bob complained on Monday 03-02 about the email of Sunday 03-01: week 9
    assert (w09["complained"], w10["complained"]) == (1, 0)
    # ann's email, opened again on Monday 03-02, counts once, in week 9 when it was sent
    assert (w10["sent"], w10["opened"], w10["bounced"], w10["delivered"]) == (2, 1, 1, 1)
    assert (w10["replied"], w10["unsubscribed"], w10["ctr"]) == (1, 1, 0.0)
    # the queued reminder is placed by when it was written (03-03)
    assert rows[("2026-W10", "ask", "reminder")]["queued"] == 1
    assert rows[("2026-W10", "thanks", "thanks")]["sent"] == 1
    assert {key[0] for key in rows} == {"2026-W09", "2026-W10"}
    periods = {p["period"]: p for p in data["periods"]}
    # customer_since dates of ann and bob open weeks of their own
    assert list(periods) == ["2025-W10", "2025-W37", "2026-W09", "2026-W10"]
    assert periods["2025-W10"]["customers_acquired"] == 1
    w09, w10 = periods["2026-W09"], periods["2026-W10"]
    assert (w09["asked"], w09["visits"], w09["referrals"], w09["converted"]) == (2, 2, 1, 0)
    assert (w09["purchases"], w09["referred_purchases"], w09["referral_rate"]) == (2, 0, 0.0)
    assert (w10["asked"], w10["visits"], w10["machine_visits"]) == (3, 1, 1)
    assert (w10["referrals"], w10["flagged"], w10["converted"]) == (3, 1, 2)
    assert (w10["purchases"], w10["referral_revenue"], w10["customers_acquired"]) == (3, 170.0, 1)
    # the totals stay totals: ann asked in both weeks is one contact asked
    assert data["referrals"]["asked"] == 4


def test_by_month_the_sunday_before_week_10_is_march(program: Project) -> None:
    data = report(program, "--period", "month")
    rows = steps(data)
    assert rows[("2026-02", "ask", "ask")]["sent"] == 1  # ann
    assert rows[("2026-03", "ask", "ask")]["sent"] == 3  # bob (Sunday 03-01), cid, dan
    assert rows[("2026-02", "ask", "ask")]["opened_machine"] == 1
    assert rows[("2026-03", "ask", "ask")]["opened_machine"] == 1
    periods = {p["period"]: p for p in data["periods"]}
    assert list(periods) == ["2025-03", "2025-09", "2026-02", "2026-03"]
    feb, mar = periods["2026-02"], periods["2026-03"]
    assert (feb["asked"], feb["visits"], feb["referrals"], feb["purchases"]) == (1, 1, 1, 2)
    assert (feb["revenue"], feb["referral_revenue"]) == (250.0, 0.0)
    assert (mar["asked"], mar["visits"], mar["machine_visits"], mar["referrals"]) == (4, 2, 1, 3)
    assert (mar["converted"], mar["value"], mar["purchases"], mar["revenue"]) == (
        2,
        150.0,
        3,
        300.0,
    )


def test_since_and_until_bound_every_figure(program: Project) -> None:
    data = report(program, "--since", "2026-03-02", "--until", "2026-03-08")
    assert (data["since"], data["until"]) == ("2026-03-02", "2026-03-08")
    rows = steps(data)
    ask = rows[(None, "ask", "ask")]
    # cid's and dan's: ann's, opened again on 03-02, was sent before the window
    assert (ask["sent"], ask["opened"], ask["opened_machine"], ask["bounced"]) == (2, 1, 0, 1)
    assert ask["complained"] == 0  # bob's complaint is in the week, his email is not
    funnel = data["referrals"]
    assert (funnel["asked"], funnel["visits"], funnel["referrals"], funnel["converted"]) == (
        3,
        1,
        3,
        2,
    )
    assert (funnel["purchases"], funnel["referral_rate"], funnel["referral_revenue"]) == (
        3,
        pytest.approx(1 / 3),
        170.0,
    )
    # only fay became a customer in that week
    assert (data["program"]["customers_acquired"], data["program"]["cac"]) == (1, 600.0)
    ltv = data["program"]["ltv"]
    # ann and bob count from the window's start (7 days to its end, 03-09 00:00), fay from
    # 03-03 10:00 (5 days 14 hours)
    assert (ltv["customers"], ltv["revenue"]) == (3, 300.0)
    assert ltv["customer_years"] == pytest.approx((7 + 7 + 5 + 14 / 24) / 365.25)
    assert ltv["value"] == pytest.approx(100.0)
    # ann introduced gus this week, and both her referrals converted in it
    top = data["referrals"]["top_referrers"]
    assert [(t["email"], t["referrals"], t["converted"]) for t in top] == [
        ("ann@example.com", 1, 2),
        ("bob@example.com", 1, 0),
    ]


def test_since_after_until_is_refused(program: Project) -> None:
    code, out = program.cli("report", "--since", "2026-03-05", "--until", "2026-03-01")
    assert code == 2 and "--since 2026-03-05 is after --until 2026-03-01" in out


def test_no_spend_no_cac(make_project: Callable[..., Project]) -> None:
    project = make_project(shipped=False)
    project.clock.advance(NOW - project.clock.now())
    build_program(project)
    assert report(project)["program"]["cac"] is None
    _, out = project.cli("report")
    assert "CAC - (no program.acquisition_spend)" in out


def test_csv_gives_the_steps_the_funnel_or_the_top_referrers(program: Project) -> None:
    def csv(*args: str) -> list[str]:
        code, out = program.cli("report", "--format", "csv", "--period", "week", *args)
        assert code == 0, out
        return out.splitlines()

    step_table = csv()  # one table, as before: its columns first, the new ones after
    assert step_table[0].startswith("sequence,step,queued,sent,failed,held,cancelled,bounced")
    assert step_table[0].endswith(",ctr,delivered,opened_machine,clicked_machine,period,complained")
    assert "ask,ask,0,2,0,0,0,0,0,0,1,1,0,0.0,0,0,1.0,2,2,2,2026-W09,1" in step_table
    funnel_table = csv("--table", "funnel")
    assert funnel_table[0].startswith("period,asked,visits,machine_visits,visit_rate,referrals")
    assert funnel_table[1].startswith("total,4,3,1,0.75,4,1,")
    assert funnel_table[1].endswith(",200.0,166.66666666666666")  # CAC, LTV
    assert [line.split(",")[0] for line in funnel_table[2:]] == [
        "2025-W10",
        "2025-W37",
        "2026-W09",
        "2026-W10",
    ]
    assert csv("--table", "referrers") == [
        "email,referrals,converted,value",
        "ann@example.com,2,2,150.0",
        "bob@example.com,1,0,0.0",
    ]


def test_the_table_tells_the_whole_story(program: Project) -> None:
    code, out = program.cli("report", "--period", "month")
    assert code == 0
    assert "(machine)" in out and "│ 2026-03 │ ask      │ reminder │" in out
    assert (
        "referral funnel: asked 4 -> visits 3 (75%) -> referrals 4 (133%; 1 flagged) -> "
        "converted 2 (50%), value 150.00 USD; machine visits 1"
    ) in out
    assert "referral funnel by month" in out
    assert "referred 1 (referral rate 20%); revenue from referrals 170.00 USD" in out
    assert "customers acquired 3; CAC 200.00 USD (spend 600.00 USD)" in out
    assert "LTV 166.67 USD = average purchase 125.00 USD x" in out
    assert "top referrers" in out and "ann@example.com" in out


@pytest.mark.parametrize("spend", ["-1", "nan", "inf"])
def test_acquisition_spend_must_be_a_real_amount(spend: str, tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text("[program]\nacquisition_spend = 0\n", encoding="utf-8")
    assert load_settings(path, env={}).program.acquisition_spend == 0.0
    with pytest.raises(SettingsError, match=r"program\.acquisition_spend"):
        load_settings(path, env={"ENGINE_PROGRAM_ACQUISITION_SPEND": spend})
