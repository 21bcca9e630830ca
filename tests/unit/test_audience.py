"""Eligibility as pure functions: each rule decides with its values, and says when to look again."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from engine.program.audience import PastEnrollment, check_audience, check_trigger, trigger_lapsed
from engine.program.sequences import Audience, Trigger, load_sequence

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
PROMOTERS = Audience(nps=frozenset({"promoter"}))


@dataclass
class FakeContact:
    email: str = "a@example.com"
    kind: str = "customer"
    nps_score: int | None = 10
    nps_at: datetime | None = None
    customer_since: datetime | None = NOW - timedelta(days=400)
    last_complaint_at: datetime | None = None
    unsubscribed_at: datetime | None = None
    created_at: datetime = NOW - timedelta(days=400)
    fields: dict[str, Any] = field(default_factory=dict)


def test_promoter_passes_every_rule() -> None:
    d = check_audience(FakeContact(), PROMOTERS, NOW)
    assert d.eligible and d.rule == "eligible"


def test_each_rule_names_itself_with_its_values() -> None:
    cases = [
        (FakeContact(nps_score=3), "min_score", "3 is below 5"),
        (FakeContact(nps_score=8), "nps", "passive"),
        (FakeContact(nps_score=None), "nps", "no score"),
        (FakeContact(kind="partner"), "kind", "partner"),
        (FakeContact(unsubscribed_at=NOW), "unsubscribed", "unsubscribed"),
        (FakeContact(customer_since=NOW - timedelta(days=5)), "customer_for_at_least", "30d"),
        (FakeContact(last_complaint_at=NOW - timedelta(days=1)), "no_complaint_within", "30d"),
    ]
    for contact, rule, words in cases:
        d = check_audience(contact, PROMOTERS, NOW)
        assert not d.eligible and d.rule == rule and words in d.detail, (rule, d)


def test_time_based_refusals_say_when_to_look_again() -> None:
    since = NOW - timedelta(days=10)
    d = check_audience(FakeContact(customer_since=since), PROMOTERS, NOW)
    assert d.recheck_at == since + timedelta(days=30)
    last = PastEnrollment("completed", NOW - timedelta(days=60))
    d = check_audience(FakeContact(), PROMOTERS, NOW, last=last)
    assert d.rule == "reenter_after" and d.recheck_at == last.started_at + timedelta(days=90)
    assert check_audience(FakeContact(), PROMOTERS, NOW + timedelta(days=31), last=last).eligible


def test_detractors_get_no_recheck_by_time_alone() -> None:
    d = check_audience(FakeContact(nps_score=2), PROMOTERS, NOW)
    assert d.recheck_at is None


def test_missing_customer_since_counts_from_first_seen() -> None:
    contact = FakeContact(customer_since=None, created_at=NOW - timedelta(days=3))
    d = check_audience(contact, PROMOTERS, NOW)
    assert d.rule == "customer_for_at_least"


def test_where_rules_match_custom_fields_as_text() -> None:
    audience = Audience(nps=frozenset({"promoter"}), where=(("plan", ("pro",)), ("seats", (5,))))
    ok = FakeContact(fields={"plan": "pro", "seats": "5"})
    assert check_audience(ok, audience, NOW).eligible
    d = check_audience(FakeContact(fields={"plan": "free", "seats": "5"}), audience, NOW)
    assert d.rule == "where.plan" and "'free'" in d.detail


def test_survey_skips_someone_who_just_answered() -> None:
    survey = Audience(min_score=None, nps_older_than=timedelta(days=90))
    fresh = FakeContact(nps_score=3, nps_at=NOW - timedelta(days=10))
    d = check_audience(fresh, survey, NOW)
    assert d.rule == "nps_older_than" and d.recheck_at == fresh.nps_at + timedelta(days=90)
    assert check_audience(FakeContact(nps_score=None), survey, NOW).eligible


def test_trigger_filters_on_nps_class_and_event_data() -> None:
    trigger = Trigger(
        event="nps.answered", nps=frozenset({"promoter"}), where=(("source", ("page",)),)
    )
    assert check_trigger(FakeContact(), trigger, "nps.answered", {"source": "page"}).eligible
    assert not check_trigger(
        FakeContact(nps_score=6), trigger, "nps.answered", {"source": "page"}
    ).eligible
    assert not check_trigger(FakeContact(), trigger, "nps.answered", {"source": "csv"}).eligible
    assert not check_trigger(FakeContact(), trigger, "replied", {}).eligible
    # an answer a newer one replaced routes nothing: only the latest answer counts
    latest = {"source": "page", "score": 10}
    assert check_trigger(FakeContact(nps_score=10), trigger, "nps.answered", latest).eligible
    replaced = check_trigger(FakeContact(nps_score=2), trigger, "nps.answered", latest)
    assert not replaced.eligible and "replaced by 2" in str(replaced)
    # and a run it started ends when the contact leaves the class the trigger wanted
    assert trigger_lapsed(FakeContact(nps_score=9), trigger) is None
    assert trigger_lapsed(FakeContact(nps_score=4), trigger) is not None


@dataclass
class LocaleContact(FakeContact):
    locale: str | None = None


def test_a_locale_rule_matches_whatever_form_the_tag_was_written_in(tmp_path: Path) -> None:
    path = tmp_path / "ask.yaml"
    path.write_text(
        "id: ask\nname: Ask\naudience: {nps: promoter, where: {locale: pt_br}}\n"
        "steps:\n  - id: ask\n    send: {template: ask.mjml, subject: Hi}\n",
        encoding="utf-8",
    )
    audience = load_sequence(path).audience
    assert audience is not None
    # Imports now keep "pt-BR"; earlier ones kept "pt-br": both are the same language.
    for stored in ("pt-BR", "pt-br", "pt_BR"):
        assert check_audience(LocaleContact(locale=stored), audience, NOW).eligible, stored
    refused = check_audience(LocaleContact(locale="pt-PT"), audience, NOW)
    assert refused.rule == "where.locale"
