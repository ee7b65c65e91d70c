"""Pure-Python checks for systemd time spans and calendar events.

A typo in ``OnCalendar=`` or ``OnUnitActiveSec=`` is only noticed by systemd on
the booted image, where the timer is then silently dropped. These checks mirror
systemd's own parsers (``parse_time()`` and ``calendar_spec_from_string()`` as
of systemd 252, see systemd.time(7)) so a host spec is rejected at build time,
without needing systemd on the build host.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo

__all__ = ["escape_exec", "escape_specifiers", "parse_timespan", "validate_calendar"]


def escape_specifiers(text: str) -> str:
    """Text for a unit setting that expands %-specifiers (Description=, paths): `%` doubled."""
    return text.replace("%", "%%")


def escape_exec(text: str) -> str:
    """A command line for Exec*=: `%` and `$` doubled, so systemd passes both on literally
    (a shell in the command then sees the `$` the spec author wrote)."""
    return escape_specifiers(text).replace("$", "$$")


# --------------------------------------------------------------------------- time spans

_USEC_PER_SEC = 1_000_000
_USEC_INFINITY = 2**64 - 1  # systemd's USEC_INFINITY; finite spans must stay below it
_LLONG_MAX = 2**63 - 1  # systemd reads each number with strtoll()
_WHITESPACE = " \t\n\r"  # systemd's WHITESPACE set; other Unicode spaces are errors
_TIMESPAN_HINT = "use e.g. 30s, 2min, 1h 30min"

# Order matters: systemd takes the first entry that is a prefix of the rest of
# the text, so "ms" must come before "m" and "months" before "M".
_UNITS: tuple[tuple[str, int], ...] = (
    ("seconds", _USEC_PER_SEC),
    ("second", _USEC_PER_SEC),
    ("sec", _USEC_PER_SEC),
    ("s", _USEC_PER_SEC),
    ("minutes", 60 * _USEC_PER_SEC),
    ("minute", 60 * _USEC_PER_SEC),
    ("min", 60 * _USEC_PER_SEC),
    ("months", 2_629_800 * _USEC_PER_SEC),
    ("month", 2_629_800 * _USEC_PER_SEC),
    ("M", 2_629_800 * _USEC_PER_SEC),
    ("msec", 1000),
    ("ms", 1000),
    ("m", 60 * _USEC_PER_SEC),
    ("hours", 3600 * _USEC_PER_SEC),
    ("hour", 3600 * _USEC_PER_SEC),
    ("hr", 3600 * _USEC_PER_SEC),
    ("h", 3600 * _USEC_PER_SEC),
    ("days", 86_400 * _USEC_PER_SEC),
    ("day", 86_400 * _USEC_PER_SEC),
    ("d", 86_400 * _USEC_PER_SEC),
    ("weeks", 604_800 * _USEC_PER_SEC),
    ("week", 604_800 * _USEC_PER_SEC),
    ("w", 604_800 * _USEC_PER_SEC),
    ("years", 31_557_600 * _USEC_PER_SEC),
    ("year", 31_557_600 * _USEC_PER_SEC),
    ("y", 31_557_600 * _USEC_PER_SEC),
    ("usec", 1),
    ("us", 1),
    ("\u03bcs", 1),  # GREEK SMALL LETTER MU
    ("\u00b5s", 1),  # MICRO SIGN
)
# strtoll() allows a leading "+"; a fraction needs at least one digit ("5." is invalid).
_NUMBER = re.compile(r"(?P<int>\+?\d+)?(?:\.(?P<frac>\d+))?")


def parse_timespan(text: str, *, allow_infinity: bool = False) -> float:
    """Return the systemd time span ``text`` in seconds, or raise ValueError.

    Accepts what ``systemd-analyze timespan`` accepts: numbers (seconds by
    default) each optionally followed by a unit, e.g. ``1h 30min`` or ``500ms``.
    ``infinity`` (returned as ``math.inf``) is only valid where the caller says
    the target setting supports it. Summed in whole microseconds, like systemd.
    """

    def fail(detail: str) -> ValueError:
        return ValueError(f"invalid time span {text!r}: {detail} ({_TIMESPAN_HINT})")

    s = text.strip(_WHITESPACE)
    if s.startswith("infinity") and not s[len("infinity") :].strip(_WHITESPACE):
        if allow_infinity:
            return math.inf
        raise fail("'infinity' is not allowed here")

    total, pos = 0, 0
    if not s:
        raise fail("empty value")
    while pos < len(s):
        if s[pos] == "-":
            raise fail("negative values are not allowed")
        m = _NUMBER.match(s, pos)
        if not m or not m.group():
            raise fail(f"expected a number at {s[pos:]!r}")
        whole = int(m["int"] or "0")
        if whole > _LLONG_MAX:
            raise fail("number too large")
        after_number = m.end()
        pos = after_number + len(s[after_number:]) - len(s[after_number:].lstrip(_WHITESPACE))
        multiplier = _USEC_PER_SEC
        for suffix, usec in _UNITS:
            if s.startswith(suffix, pos):
                multiplier, pos = usec, pos + len(suffix)
                break
        else:
            # No unit: fine if followed by whitespace or the end ("12.34 .56"),
            # but "12.34.56" or "5x" is garbage.
            if pos == after_number and pos < len(s):
                raise fail(f"unknown unit {s[pos:]!r}")
        if whole >= _USEC_INFINITY // multiplier:
            raise fail("value out of range")
        total += whole * multiplier
        digit_weight = multiplier // 10
        for digit in m["frac"] or "":
            total += int(digit) * digit_weight
            digit_weight //= 10
        if total >= _USEC_INFINITY:
            raise fail("value out of range")
        pos += len(s[pos:]) - len(s[pos:].lstrip(_WHITESPACE))
    return total / _USEC_PER_SEC


# --------------------------------------------------------------------------- calendar

_CALENDAR_HINT = "use e.g. daily, *:0/5, Mon..Fri *-*-* 02:15:00"
_SHORTHANDS = frozenset(
    {
        "minutely",
        "hourly",
        "daily",
        "monthly",
        "weekly",
        "yearly",
        "annually",
        "anually",  # sic, kept by systemd for compatibility
        "quarterly",
        "semiannually",
        "semi-annually",
        "biannually",
        "bi-annually",
    }
)
_WEEKDAYS = {
    name: nr
    for nr, names in enumerate(
        (
            ("monday", "mon"),
            ("tuesday", "tue"),
            ("wednesday", "wed"),
            ("thursday", "thu"),
            ("friday", "fri"),
            ("saturday", "sat"),
            ("sunday", "sun"),
        )
    )
    for name in names
}
_WORD = re.compile(r"[A-Za-z]*")
_INT_ITEM = re.compile(r"(\d+)(?:\.\.(\d+))?(?:/(\d+))?")
_SEC = r"(\d+(?:\.\d+)?)"  # one "." is a decimal point, ".." is a range
_SEC_ITEM = re.compile(rf"{_SEC}(?:\.\.{_SEC})?(?:/{_SEC})?")
_MAX_TIMESTAMP = 7_258_118_400  # 2200-01-01T00:00:00Z; systemd's last year is 2199


@dataclass(frozen=True)
class _Field:
    name: str
    lo: int
    hi: int
    usec: bool = False  # seconds are kept in microseconds, as systemd does

    def show(self, value: int) -> str:
        return f"{value / _USEC_PER_SEC:g}" if self.usec else str(value)


_YEAR = _Field("year", 1970, 2199)
_MONTH = _Field("month", 1, 12)
_DAY = _Field("day", 1, 31)
_HOUR = _Field("hour", 0, 23)
_MINUTE = _Field("minute", 0, 59)
_SECOND = _Field("second", 0, 60 * _USEC_PER_SEC - 1, usec=True)


def _to_usec(number: str) -> int:
    """Seconds text to microseconds, rounding on the 7th digit like systemd."""
    whole, _, frac = number.partition(".")
    usec = int(whole) * _USEC_PER_SEC + int(frac[:6].ljust(6, "0"))
    return usec + (len(frac) > 6 and frac[6] >= "5")


def _check_chain(chain: str, field: _Field, *, end_of_month: bool = False) -> None:
    """Validate one component (e.g. minute ``02/5`` or day ``1,15``)."""
    if chain == "*":
        return
    conv = _to_usec if field.usec else int
    entries: dict[tuple[int, int, int], str] = {}
    for item in chain.split(","):
        m = (_SEC_ITEM if field.usec else _INT_ITEM).fullmatch(item)
        if not m:
            raise ValueError(f"{field.name} {item!r} is not a number, range a..b or repetition a/n")
        start = conv(m[1])
        stop = conv(m[2]) if m[2] else -1
        repeat = (_USEC_PER_SEC if field.usec else 1) if m[2] else 0
        if m[3]:
            repeat = conv(m[3])
            if repeat == 0:
                raise ValueError(f"{field.name} repetition in {item!r} must not be 0")
        elif field.usec and stop >= 0 and start + repeat > stop:
            raise ValueError(f"second range {item!r} is shorter than 1s")
        if field is _YEAR:  # two-digit years: 69 -> 2069, 70 -> 1970
            start, stop = (
                v + 2000 if 0 <= v < 70 else v + 1900 if 70 <= v < 100 else v for v in (start, stop)
            )
        # systemd's normalize_chain(): trim the range to a multiple of the
        # repetition, and drop repetitions/ranges that cannot fire twice.
        if stop > start and repeat > 0:
            stop -= (stop - start) % repeat
        if (stop > start and repeat > 0 and start + repeat > stop) or start == stop:
            repeat, stop = 0, -1
        entries.setdefault((start, stop, repeat), item)

    hi = field.hi
    prefix = "~" if end_of_month else ""
    for (start, stop, repeat), item in sorted(entries.items()):
        if end_of_month:
            # "~" reaches back at most 28 days. systemd's chain_valid() lowers
            # this limit by 3 again for every further (sorted) entry, so
            # "*~1,26" is rejected on the target; mirror that.
            hi -= 3
        for value in (start, stop) if stop >= 0 else (start,):
            if not field.lo <= value <= hi:
                where = " counted from the end of the month" if end_of_month else ""
                raise ValueError(
                    f"{field.name} {prefix}{field.show(value)} is out of range "
                    f"{field.show(field.lo)}..{field.show(hi)}{where}"
                )
        if repeat > hi - field.lo:
            raise ValueError(f"{field.name} repetition in {item!r} is larger than its range")
        if stop >= 0 and start + repeat > stop:
            raise ValueError(f"{field.name} range {item!r} ends before it starts")
        if stop < 0 and (start - repeat < field.lo if end_of_month else start + repeat > hi):
            raise ValueError(
                f"{field.name} {prefix + item!r} repeats past the "
                f"{'start of the month' if end_of_month else 'end of its range'}"
            )


def _check_weekdays(token: str) -> None:
    """Validate a weekday list such as ``Mon..Fri`` or ``Sat,Sun``."""
    pos, range_from = 0, None
    while True:
        word = _WORD.match(token, pos).group()
        nr = _WEEKDAYS.get(word.lower())
        if nr is None:
            raise ValueError(f"unknown weekday or keyword {word or token[pos:]!r}")
        if range_from is not None and range_from > nr:
            raise ValueError(f"weekday range in {token!r} runs backwards")
        pos += len(word)
        if pos == len(token):
            return
        if token.startswith("..", pos) or token[pos] == "-":
            if range_from is not None:
                raise ValueError(f"weekday range in {token!r} has too many ends")
            range_from, pos = nr, pos + (2 if token[pos] == "." else 1)
        elif token[pos] == ",":
            range_from, pos = None, pos + 1
        else:
            raise ValueError(f"unexpected {token[pos:]!r} in weekdays {token!r}")
        if pos == len(token):  # a trailing comma is fine, an open range is not
            if range_from is not None:
                raise ValueError(f"weekday range in {token!r} has no end")
            return


def _check_date(token: str) -> None:
    """Validate ``[YYYY-]MM-DD`` where ``~`` before the day counts from month end."""
    if token.startswith("@"):  # @UNIX-TIMESTAMP
        if not re.fullmatch(r"@\d+", token) or int(token[1:]) >= _MAX_TIMESTAMP:
            raise ValueError(f"invalid timestamp {token!r}")
        return
    parts = re.split(r"([-~])", token)
    chains, seps = parts[::2], parts[1::2]
    if len(chains) == 1:
        raise ValueError(f"{token!r} is neither a date (YYYY-MM-DD) nor a time (HH:MM[:SS])")
    if len(chains) > 3 or (len(chains) == 3 and seps[0] == "~"):
        raise ValueError(f"date {token!r} is not [YYYY-]MM-DD or [YYYY-]MM~DD")
    fields = (_MONTH, _DAY) if len(chains) == 2 else (_YEAR, _MONTH, _DAY)
    for chain, field in zip(chains, fields, strict=True):
        _check_chain(chain, field, end_of_month=field is _DAY and seps[-1] == "~")


def _check_time(token: str) -> None:
    """Validate ``HH:MM[:SS[.ffffff]]``."""
    chains = token.split(":")
    if len(chains) not in (2, 3):
        raise ValueError(f"time {token!r} is not HH:MM or HH:MM:SS")
    for chain, field in zip(chains, (_HOUR, _MINUTE, _SECOND), strict=False):
        _check_chain(chain, field)


def _is_timezone(name: str) -> bool:
    """True for "UTC" or an IANA zone name the build host knows, like systemd."""
    if name.upper() == "UTC":
        return True
    try:
        ZoneInfo(name)
    except (ValueError, LookupError, OSError):
        return False
    return True


def validate_calendar(text: str) -> str:
    """Return ``text`` stripped if it is a valid systemd calendar event.

    Grammar (systemd.time(7)): a shorthand such as ``daily``, or
    ``[WEEKDAYS] [DATE] [TIME] [TIMEZONE]`` with ``*``, lists ``a,b``, ranges
    ``a..b`` and repetitions ``a/n``. Raises ValueError naming the bad part.
    The local-timezone abbreviations systemd also accepts (``CET`` …) depend on
    the target's clock settings and are rejected here; use an IANA name.
    """
    spec = text.strip()
    try:
        if not spec:
            raise ValueError("empty value")
        body = spec
        if " " in spec and _is_timezone(spec.rsplit(" ", 1)[1]):
            body = spec.rsplit(" ", 1)[0]
        if body.lower() in _SHORTHANDS:
            return spec
        tokens = [token for token in body.split(" ") if token]  # systemd splits on " " only
        if body.endswith(" ") and (body.strip(" ").lower() in _SHORTHANDS or ":" in tokens[-1]):
            raise ValueError("extra space before the time zone")
        if tokens[0][0].isalpha():
            _check_weekdays(tokens.pop(0))
        if tokens and ":" not in tokens[0]:
            date = tokens.pop(0)
            _check_date(date)
            if tokens and date.startswith("@"):
                raise ValueError("nothing may follow a @timestamp")
        if tokens:
            if ":" not in tokens[0]:
                raise ValueError(f"unexpected {tokens[0]!r}")
            _check_time(tokens.pop(0))
        if tokens:
            raise ValueError(f"unexpected {' '.join(tokens)!r} after the time (not a time zone)")
    except ValueError as exc:
        raise ValueError(f"invalid calendar event {text!r}: {exc} ({_CALENDAR_HINT})") from None
    return spec
