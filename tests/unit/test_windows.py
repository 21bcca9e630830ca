"""Send windows: parsing, zones, and next_open across daylight-saving changes."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.program.windows import (
    DAYS,
    END_OF_DAY,
    SendWindow,
    next_open,
    parse_days,
    parse_hours,
    parse_zone,
    zone_for,
)

ZONES = (
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",  # 30-minute daylight saving
    "Asia/Jakarta",
    "Asia/Riyadh",
    "Pacific/Apia",  # skipped 2011-12-30 entirely; DST until 2021
    "America/Sao_Paulo",  # DST until 2019, changing at midnight
    "UTC",
)
NEW_YORK = ZoneInfo("America/New_York")
EVERY_DAY = frozenset(range(7))
WEEKDAYS = frozenset(range(5))


def window(days: frozenset[int], hours: str) -> SendWindow:
    return SendWindow(days, *parse_hours(hours), "contact")


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


# --- parsing -------------------------------------------------------------------------------------


def test_parse_days_numbers_from_monday() -> None:
    assert parse_days(["mon", "wed", "sun"]) == {0, 2, 6}
    assert parse_days(DAYS) == EVERY_DAY


@pytest.mark.parametrize(
    ("days", "message"),
    [
        (["mon", "funday"], "unknown day 'funday'"),
        (["Mon"], "unknown day 'Mon'"),
        ([], "at least one day"),
        ("mon", "expected a list of days"),
    ],
)
def test_parse_days_rejects(days: list[str] | str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_days(days)


def test_parse_hours() -> None:
    assert parse_hours("09:00-17:00") == (time(9), time(17))
    assert parse_hours("9:30-17:45") == (time(9, 30), time(17, 45))
    assert parse_hours("00:00-24:00") == (time(0), END_OF_DAY)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("9-17", "expected HH:MM-HH:MM"),
        ("09:00 - 17:00", "expected HH:MM-HH:MM"),
        ("09:00-17:60", "expected HH:MM-HH:MM"),
        ("25:00-26:00", "expected HH:MM-HH:MM"),
        ("09:00-24:30", "expected HH:MM-HH:MM"),
        ("09:00-17:00\n", "expected HH:MM-HH:MM"),
        ("17:00-09:00", "start must be before the end"),
        ("09:00-09:00", "start must be before the end"),
    ],
)
def test_parse_hours_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_hours(text)


def test_zone_for_falls_back_when_the_contact_zone_is_empty_or_unknown() -> None:
    assert zone_for("Asia/Jakarta", "UTC") == ZoneInfo("Asia/Jakarta")
    assert zone_for(" Asia/Jakarta ", "UTC") == ZoneInfo("Asia/Jakarta")
    for name in (None, "", "  ", "Mars/Olympus", "America", "../etc/passwd"):
        assert zone_for(name, "Europe/London") == ZoneInfo("Europe/London")


def test_parse_zone_rejects_unknown_names() -> None:
    for name in ("Mars/Olympus", "America", "../etc/passwd", ""):
        with pytest.raises(ValueError, match="unknown time zone"):
            parse_zone(name)


def test_send_window_is_checked_when_built() -> None:
    with pytest.raises(ValueError, match="days"):
        SendWindow(frozenset(), time(9), time(17), "contact")
    with pytest.raises(ValueError, match="days"):
        SendWindow(frozenset({7}), time(9), time(17), "contact")
    with pytest.raises(ValueError, match="before end"):
        SendWindow(EVERY_DAY, time(17), time(9), "contact")
    with pytest.raises(ValueError, match="unknown time zone"):
        SendWindow(EVERY_DAY, time(9), time(17), "Europe/Londn")


def test_window_zone_is_the_contacts_or_the_fixed_one() -> None:
    by_contact = SendWindow.parse(["mon"], "09:00-17:00", "contact")
    fixed = SendWindow.parse(["mon"], "09:00-17:00", "Asia/Riyadh")
    assert by_contact.zone("Asia/Jakarta", "UTC") == ZoneInfo("Asia/Jakarta")
    assert by_contact.zone(None, "UTC") == ZoneInfo("UTC")
    assert fixed.zone("Asia/Jakarta", "UTC") == ZoneInfo("Asia/Riyadh")


def test_window_contains_excludes_the_end_unless_it_is_midnight() -> None:
    office = window(EVERY_DAY, "09:00-17:00")
    assert office.contains(datetime(2024, 1, 1, 9, 0))
    assert office.contains(datetime(2024, 1, 1, 16, 59, 59, 999999))
    assert not office.contains(datetime(2024, 1, 1, 17, 0))
    assert not office.contains(datetime(2024, 1, 1, 8, 59, 59))
    late = window(EVERY_DAY, "20:00-24:00")
    assert late.contains(datetime(2024, 1, 1, 23, 59, 59, 999999))


# --- next_open: examples -------------------------------------------------------------------------


def test_an_instant_inside_the_window_is_returned_as_is() -> None:
    instant = utc(2024, 1, 10, 15, 12, 33, 250)  # Wednesday 10:12 in New York
    assert next_open(instant, window(WEEKDAYS, "09:00-17:00"), NEW_YORK) == instant


def test_result_is_utc_even_for_another_zone_instant() -> None:
    instant = datetime(2024, 1, 13, 12, 0, tzinfo=ZoneInfo("Asia/Jakarta"))  # Saturday
    result = next_open(instant, window(WEEKDAYS, "09:00-17:00"), ZoneInfo("Asia/Jakarta"))
    assert result == utc(2024, 1, 15, 2, 0)  # Monday 09:00 WIB
    assert result.tzinfo is UTC


def test_a_naive_instant_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_open(datetime(2024, 1, 1, 12), window(EVERY_DAY, "09:00-17:00"), NEW_YORK)


def test_weekend_waits_for_monday_across_spring_forward() -> None:
    saturday = utc(2024, 3, 9, 12, 0)  # New York springs forward on Sunday 2024-03-10
    result = next_open(saturday, window(WEEKDAYS, "09:00-17:00"), NEW_YORK)
    assert result == utc(2024, 3, 11, 13, 0)  # 09:00 EDT


def test_start_inside_the_spring_forward_gap_opens_when_the_clock_resumes() -> None:
    # 02:30 does not exist on 2024-03-10 in New York: 02:00 EST jumps to 03:00 EDT.
    result = next_open(utc(2024, 3, 10, 5, 0), window(EVERY_DAY, "02:30-17:00"), NEW_YORK)
    assert result == utc(2024, 3, 10, 7, 0)
    assert result.astimezone(NEW_YORK).replace(tzinfo=None) == datetime(2024, 3, 10, 3, 0)


def test_a_window_entirely_inside_the_gap_opens_the_next_day() -> None:
    result = next_open(utc(2024, 3, 10, 5, 0), window(EVERY_DAY, "02:00-02:45"), NEW_YORK)
    assert result == utc(2024, 3, 11, 6, 0)  # 02:00 EDT on Monday


def test_fall_back_opens_at_the_first_of_two_identical_wall_times() -> None:
    # 2024-11-03 in New York: 01:00-02:00 happens twice (EDT, then EST).
    result = next_open(utc(2024, 11, 3, 4, 0), window(EVERY_DAY, "01:30-01:40"), NEW_YORK)
    assert result == utc(2024, 11, 3, 5, 30)  # 01:30 EDT
    assert result.astimezone(NEW_YORK).fold == 0


def test_fall_back_reopens_for_the_repeated_hour_after_the_first_one_closed() -> None:
    # At 01:50 EDT the 01:30-01:40 window has closed, but the clock will show 01:30 again.
    result = next_open(utc(2024, 11, 3, 5, 50), window(EVERY_DAY, "01:30-01:40"), NEW_YORK)
    assert result == utc(2024, 11, 3, 6, 30)  # 01:30 EST
    assert result.astimezone(NEW_YORK).fold == 1


def test_fall_back_day_normal_hours_open_once_at_local_nine() -> None:
    result = next_open(utc(2024, 11, 3, 3, 0), window(EVERY_DAY, "09:00-17:00"), NEW_YORK)
    assert result == utc(2024, 11, 3, 14, 0)  # 09:00 EST


def test_london_spring_forward_at_one() -> None:
    london = ZoneInfo("Europe/London")
    result = next_open(utc(2024, 3, 31, 0, 10), window(EVERY_DAY, "01:15-03:00"), london)
    assert result == utc(2024, 3, 31, 1, 0)  # 02:00 BST, the first minute after the gap


def test_lord_howe_half_hour_gap() -> None:
    lord_howe = ZoneInfo("Australia/Lord_Howe")
    # 2024-10-06 02:00 +10:30 becomes 02:30 +11:00.
    result = next_open(utc(2024, 10, 5, 15, 0), window(EVERY_DAY, "02:10-04:00"), lord_howe)
    assert result == utc(2024, 10, 5, 15, 30)
    assert result.astimezone(lord_howe).time() == time(2, 30)


def test_sao_paulo_day_starting_at_one_in_the_morning() -> None:
    sao_paulo = ZoneInfo("America/Sao_Paulo")
    # 2018-11-04 began at 01:00: midnight to one o'clock did not exist.
    opens_at_midnight = window(EVERY_DAY, "00:00-09:00")
    result = next_open(utc(2018, 11, 4, 2, 30), opens_at_midnight, sao_paulo)
    assert result == utc(2018, 11, 4, 3, 0)  # 01:00 -02
    only_that_hour = window(EVERY_DAY, "00:00-00:30")
    result = next_open(utc(2018, 11, 4, 2, 30), only_that_hour, sao_paulo)
    assert result == utc(2018, 11, 5, 2, 0)  # the next midnight


def test_apia_skipped_friday_waits_a_week() -> None:
    apia = ZoneInfo("Pacific/Apia")
    # Samoa went from Thursday 2011-12-29 straight to Saturday 2011-12-31.
    fridays = window(frozenset({4}), "09:00-17:00")
    result = next_open(utc(2011, 12, 29, 12, 0), fridays, apia)
    assert result.astimezone(apia).date() == date(2012, 1, 6)
    assert result.astimezone(apia).time() == time(9, 0)


def test_timezones_without_daylight_saving() -> None:
    riyadh = ZoneInfo("Asia/Riyadh")
    sunday_to_thursday = window(frozenset({6, 0, 1, 2, 3}), "08:00-16:00")
    friday = utc(2024, 5, 10, 10, 0)
    assert next_open(friday, sunday_to_thursday, riyadh) == utc(2024, 5, 12, 5, 0)


# --- next_open: properties -----------------------------------------------------------------------


def _transition_days(zone: ZoneInfo) -> list[datetime]:
    """Days (noon UTC) before which the zone's offset changed, 2008-2025: where bugs live."""
    days = []
    day = utc(2008, 1, 1, 12)
    offset = day.astimezone(zone).utcoffset()
    while day.year < 2026:
        day += timedelta(days=1)
        new = day.astimezone(zone).utcoffset()
        if new != offset:
            days.append(day)
            offset = new
    return days


TRANSITIONS = {name: _transition_days(ZoneInfo(name)) for name in ZONES}


@st.composite
def cases(draw: st.DrawFn) -> tuple[datetime, SendWindow, ZoneInfo]:
    name = draw(st.sampled_from(ZONES))
    near = TRANSITIONS[name]
    around_a_transition = draw(st.booleans())
    if near and around_a_transition:
        instant = draw(st.sampled_from(near)) + draw(
            st.timedeltas(min_value=timedelta(days=-3), max_value=timedelta(days=1))
        )
    else:
        instant = draw(
            st.datetimes(min_value=datetime(1995, 1, 1), max_value=datetime(2035, 12, 31))
        ).replace(tzinfo=UTC)
    # Half-hour boundaries often coincide with transitions; any minute tests the rest.
    start = draw(st.one_of(st.sampled_from(range(0, 24 * 60, 30)), st.integers(0, 24 * 60 - 1)))
    end = draw(st.integers(start + 1, 24 * 60))
    days = draw(st.frozensets(st.integers(0, 6), min_size=1))
    start_time = time(start // 60, start % 60)
    end_time = END_OF_DAY if end == 24 * 60 else time(end // 60, end % 60)
    return instant, SendWindow(days, start_time, end_time, "contact"), ZoneInfo(name)


@settings(max_examples=300, deadline=None)
@given(cases())
def test_next_open_is_the_earliest_open_instant(
    case: tuple[datetime, SendWindow, ZoneInfo],
) -> None:
    instant, send_window, zone = case
    result = next_open(instant, send_window, zone)

    assert result >= instant
    assert result.utcoffset() == timedelta(0)
    local = result.astimezone(zone)
    assert local.weekday() in send_window.days
    assert send_window.contains(local)
    if send_window.contains(instant.astimezone(zone)):
        assert result == instant
    # Nothing earlier is open. Since 1995 these zones' offsets and changes fall on whole
    # minutes, as do window starts, so an open stretch can only begin at `instant` or on a
    # whole UTC minute: checking those is exhaustive.
    minute = instant.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while minute < result:
        assert not send_window.contains(minute.astimezone(zone)), minute
        minute += timedelta(minutes=1)
    assert next_open(result, send_window, zone) == result
