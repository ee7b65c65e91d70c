"""Time span and calendar validation must agree with systemd itself."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess

import pytest

from builder.spec.systemd_values import parse_timespan, validate_calendar

GOOD_TIMESPANS: list[tuple[str, float]] = [
    ("2min", 120),
    ("30s", 30),
    ("1h 30min", 5400),
    ("6h", 21600),
    ("12h", 43200),
    ("20min", 1200),
    ("0", 0),
    ("45", 45),
    ("500ms", 0.5),
    ("1d", 86400),
    ("1w", 604800),
    ("1M", 2_629_800),
    ("1y", 31_557_600),
    ("1.5h", 5400),
    (".5s", 0.5),
    ("1h30m", 5400),
    ("5 s", 5),
    ("  5s  ", 5),
    ("1 sec 1 min", 61),
    ("2 minutes", 120),
    ("3hours", 10800),
    ("1hr", 3600),
    ("1month", 2_629_800),
    ("2years", 63_115_200),
    ("250usec", 0.00025),
    ("10us", 0.00001),
    ("10µs", 0.00001),
    ("100msec", 0.1),
    ("5m5", 305),  # trailing number without unit is seconds
]

BAD_TIMESPANS: list[tuple[str, str]] = [
    ("fast", "expected a number"),
    ("", "empty"),
    ("   ", "empty"),
    ("5x", "unknown unit 'x'"),
    ("5mins", "expected a number at 's'"),  # "min" then a stray "s"
    ("1S", "unknown unit 'S'"),  # units are case-sensitive
    ("1H", "unknown unit 'H'"),
    ("-5s", "negative"),
    ("-0", "negative"),
    ("5.", "unknown unit '.'"),
    ("12.34.56", "unknown unit '.56'"),
    ("1,5s", "unknown unit ',5s'"),
    ("1e3", "unknown unit 'e3'"),
    ("infinity", "'infinity' is not allowed"),
    ("infinity 5", "expected a number"),
    ("99999999999999999999", "too large"),
    ("584542y", "out of range"),
]

GOOD_CALENDARS = [
    "*:02/5",
    "*:04/10",
    "*:01/5",
    "*:07/30",
    "*-*-* 02:15:00",
    "Mon *-*-* 00:00:00",
    "*:0/5",
    "daily",
    "*-*-* *:*:00",
    "minutely",
    "hourly",
    "weekly",
    "monthly",
    "yearly",
    "annually",
    "quarterly",
    "semiannually",
    "Daily",
    "Mon..Fri 10:00",
    "Sat,Sun 10:00",
    "mon-fri",
    "Monday,Fri",
    "Mon,Tue..Thu *-*-* 1:2",
    "Mon",
    "*-*-*",
    "2024-*-*",
    "2199-12-31",
    "70-01-01",
    "*-*-01/2",
    "*-1..5",
    "*-02-29",
    "*-02~03",
    "*-05~07/1",
    "*~1,2..25",
    "0..23/2:00",
    "8,12:00",
    "5..5:00",
    "*:*",
    "*:*:*",
    "12:00:59.5",
    "*:*:00/0.5",
    "@1700000000",
    "2024-01-01 UTC",
    "*:0/5 utc",
    "daily Europe/London",
    "Mon 10:00 Europe/London",
    "Mon  10:00",
    "  daily  ",  # surrounding whitespace is stripped
]

BAD_CALENDARS: list[tuple[str, str]] = [
    ("*:61", "minute 61 is out of range 0..59"),
    ("25:00", "hour 25 is out of range 0..23"),
    ("24:00", "hour 24 is out of range"),
    ("*-13-01", "month 13 is out of range 1..12"),
    ("*-*-32", "day 32 is out of range 1..31"),
    ("1969-01-01", "year 1969 is out of range 1970..2199"),
    ("*-*-* 23:59:60", "second 60 is out of range"),
    ("every 5 minutes", "unknown weekday or keyword 'every'"),
    ("*:xx", "minute 'xx' is not a number"),
    ("", "empty"),
    ("   ", "empty"),
    ("UTC", "unknown weekday or keyword 'UTC'"),
    ("Wed..Mon", "runs backwards"),
    ("Mon..", "has no end"),
    ("Mon.Fri", "unexpected '.Fri'"),
    ("Monx", "unknown weekday or keyword 'Monx'"),
    ("10", "neither a date"),
    ("10:10:10:10", "not HH:MM or HH:MM:SS"),
    ("12:", "minute '' is not a number"),
    ("2024-01-01T10:00", "hour '2024-01-01T10' is not a number"),
    ("01-02-03-04", "not [YYYY-]MM-DD"),
    ("*/5:00", "hour '*/5' is not a number"),
    ("*:*/5", "minute '*/5' is not a number"),
    ("1,,2:00", "hour '' is not a number"),
    ("5..4:00", "ends before it starts"),
    ("*:50/10", "repeats past the end of its range"),
    ("*:00/60", "larger than its range"),
    ("*:0/0", "must not be 0"),
    ("*:*:0..0.5", "shorter than 1s"),
    ("*-*~01/2", "repeats past the start of the month"),
    ("*~29", "day ~29 is out of range 1..28"),
    ("*~1,26", "day ~26 is out of range 1..25"),
    ("10:00:00 10", "unexpected '10' after the time"),
    ("*-*-* 01:00 PST", "unexpected 'PST'"),
    ("00:00 Europe/Nowhere", "unexpected 'Europe/Nowhere'"),
    ("Mon daily", "neither a date"),
    ("10:00  UTC", "extra space"),
    ("Mon\t10:00", "unexpected '\\t10:00'"),
]


@pytest.mark.parametrize(("text", "seconds"), GOOD_TIMESPANS)
def test_good_timespans(text: str, seconds: float) -> None:
    assert parse_timespan(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "problem"), BAD_TIMESPANS)
def test_bad_timespans(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)) as info:
        parse_timespan(text)
    assert f"invalid time span {text!r}" in str(info.value)
    assert "use e.g. 30s, 2min, 1h 30min" in str(info.value)


def test_infinity_only_when_allowed() -> None:
    assert parse_timespan(" infinity ", allow_infinity=True) == math.inf
    with pytest.raises(ValueError, match="not allowed"):
        parse_timespan("infinity")


@pytest.mark.parametrize("text", GOOD_CALENDARS)
def test_good_calendars(text: str) -> None:
    assert validate_calendar(text) == text.strip()


@pytest.mark.parametrize(("text", "problem"), BAD_CALENDARS)
def test_bad_calendars(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)) as info:
        validate_calendar(text)
    assert f"invalid calendar event {text!r}" in str(info.value)
    assert "use e.g. daily" in str(info.value)


SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
_USEC_INFINITY = 2**64 - 1


def _systemd(kind: str, text: str) -> subprocess.CompletedProcess[str]:
    # TZ=UTC: systemd also accepts the local zone's abbreviations (e.g. "CET"),
    # which validate_calendar() deliberately does not know about.
    env = {**os.environ, "TZ": "UTC", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
    return subprocess.run(
        [SYSTEMD_ANALYZE, kind, "--", text], capture_output=True, text=True, env=env, check=False
    )


def _our_timespan_usec(text: str) -> int | None:
    try:
        seconds = parse_timespan(text, allow_infinity=True)
    except ValueError:
        return None
    return _USEC_INFINITY if seconds == math.inf else round(seconds * 1_000_000)


def _our_calendar_ok(text: str) -> bool:
    try:
        validate_calendar(text)
    except ValueError:
        return False
    return True


def test_examples_agree_with_systemd_analyze() -> None:
    """systemd classifies every example above as we expect, and as we do."""
    if not os.access(SYSTEMD_ANALYZE, os.X_OK):
        reason = f"{SYSTEMD_ANALYZE} not found; cannot cross-check against systemd"
        print(reason)
        pytest.skip(reason)
    mismatches: list[str] = []
    timespans: list[tuple[str, int | None]] = [
        *((t, round(s * 1_000_000)) for t, s in GOOD_TIMESPANS),
        *((t, None) for t, _ in BAD_TIMESPANS if t != "infinity"),
        ("infinity", _USEC_INFINITY),  # bad only without allow_infinity=True
    ]
    for text, expected in timespans:
        result = _systemd("timespan", text)
        usec = re.search(r"μs: (\d+)", result.stdout)
        theirs = int(usec.group(1)) if result.returncode == 0 and usec else None
        ours = _our_timespan_usec(text)
        if not expected == theirs == ours:
            mismatches.append(
                f"timespan {text!r} (µs, None = invalid): "
                f"expected {expected}, systemd {theirs}, ours {ours}"
            )
    calendars = [(t, True) for t in GOOD_CALENDARS] + [(t, False) for t, _ in BAD_CALENDARS]
    for text, expected_ok in calendars:
        # systemd does not strip; the unit file parser does that before it.
        result = _systemd("calendar", text.strip())
        theirs_ok = result.returncode == 0
        ours_ok = _our_calendar_ok(text)
        if not expected_ok == theirs_ok == ours_ok:
            mismatches.append(
                f"calendar {text!r} (valid?): expected {expected_ok}, systemd {theirs_ok}, "
                f"ours {ours_ok}; systemd said {result.stderr.strip() or 'ok'}"
            )
    assert not mismatches, "\n".join(mismatches)
