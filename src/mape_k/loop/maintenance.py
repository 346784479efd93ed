"""Maintenance windows: recurring times in which no action runs on their targets.

A window (`maintenance:` in the config) names its targets (or `*`) and a list of time
intervals in Alertmanager's schema (`time_intervals` of its configuration): `times`
(`start_time`/`end_time` "HH:MM", the start inclusive, the end exclusive, "24:00" allowed),
`weekdays` (`monday:friday`, `sunday`), `days_of_month` (`1:5`, `-1`: negative counts from
the end of the month), `months` (`1:3`, `december`), `years` (`2026:2027`) and `location`
(an IANA time zone, default UTC). Ranges are inclusive. Within a field one entry must match;
an empty field matches anything; every field must match. An instant is inside the window
when any of its intervals matches.

Everything is checked when the config loads (errors name the field); `active_window` is a
pure function of the windows, a target and `now`. The `maintenance` guard (loop/guards.py)
delays every policy on a target inside a window.
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import re
from collections.abc import Iterable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

WEEKDAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
MONTHS = tuple(calendar.month_name[i].lower() for i in range(1, 13))
NAME_PATTERN = r"[A-Za-z0-9_.:-]{1,64}"
# How far ahead the end of a window is looked for: a window that is on for longer (every
# day, all day) is reported as lasting at least until then.
HORIZON_DAYS = 400
_HHMM = re.compile(r"^(\d{2}):(\d{2})$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _minutes(value: str) -> int:
    match = _HHMM.match(value)
    if match is None:
        raise ValueError(f'expected "HH:MM", got {value!r}')
    hours, minutes = int(match[1]), int(match[2])
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise ValueError(f'{value!r} is not a time of day from "00:00" to "24:00"')
    return hours * 60 + minutes


class TimeRange(_Model):
    start_time: str = Field(description='"HH:MM", inclusive.')
    end_time: str = Field(description='"HH:MM", exclusive ("24:00": the end of the day).')

    @field_validator("start_time", "end_time")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        _minutes(value)
        return value

    @model_validator(mode="after")
    def _ordered(self) -> TimeRange:
        if _minutes(self.start_time) >= _minutes(self.end_time):
            raise ValueError(
                f"end_time {self.end_time!r} must be after start_time {self.start_time!r}"
                " (a window across midnight is two ranges)"
            )
        return self

    def span(self) -> tuple[int, int]:
        """(start, end) in minutes of the day, the end exclusive."""
        return _minutes(self.start_time), _minutes(self.end_time)


def _number(text: str, names: tuple[str, ...], what: str, *, base: int = 1) -> int:
    word = text.strip().lower()
    if word in names:
        return names.index(word) + base
    if re.fullmatch(r"-?\d{1,5}", word):
        return int(word)
    raise ValueError(f"{text!r} is not a {what}")


def _split(value: str) -> tuple[str, str]:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a value or a range 'a:b', got {value!r}")
    begin, sep, end = value.partition(":")
    return begin, end if sep else begin


@functools.lru_cache(maxsize=1024)
def weekday_range(value: str) -> tuple[int, int]:
    """'monday:friday' -> (1, 5), Sunday 0 (names only, as Alertmanager takes them)."""
    names = [part.strip().lower() for part in _split(value)]
    first, last = (WEEKDAYS.index(name) if name in WEEKDAYS else -1 for name in names)
    if first < 0 or last < 0:
        raise ValueError(f"{value!r} is not a weekday or a range of weekdays (monday:friday)")
    if first > last:
        raise ValueError(f"{value!r}: the start day is after the end day (sunday is first)")
    return first, last


@functools.lru_cache(maxsize=1024)
def day_of_month_range(value: str) -> tuple[int, int]:
    """'1:5', '-1' (the last day), '-7:-1'; 1..31 or -31..-1."""
    begin, end = (_number(part, (), "day of the month") for part in _split(value))
    for day in (begin, end):
        if day == 0 or not -31 <= day <= 31:
            raise ValueError(f"{value!r}: {day} is not a day of the month (1..31 or -31..-1)")
    if begin < 0 < end:
        raise ValueError(f"{value!r}: the end day must be negative when the start day is")
    # As Alertmanager: a negative day checked as in a 28-day month.
    if (28 + begin if begin < 0 else begin) > (28 + end if end < 0 else end):
        raise ValueError(f"{value!r}: the end day is before the start day")
    return begin, end


@functools.lru_cache(maxsize=1024)
def month_range(value: str) -> tuple[int, int]:
    """'1:3', 'may:august', 'december' -> months 1..12."""
    begin, end = (_number(part, MONTHS, "month (1..12 or a name)") for part in _split(value))
    for month in (begin, end):
        if not 1 <= month <= 12:
            raise ValueError(f"{value!r}: {month} is not a month (1..12)")
    if begin > end:
        raise ValueError(f"{value!r}: the end month is before the start month")
    return begin, end


@functools.lru_cache(maxsize=1024)
def year_range(value: str) -> tuple[int, int]:
    """'2026:2027', '2026'."""
    begin, end = (_number(part, (), "year") for part in _split(value))
    for year in (begin, end):
        if not 1 <= year <= 9999:
            raise ValueError(f"{value!r}: {year} is not a year")
    if begin > end:
        raise ValueError(f"{value!r}: the end year is before the start year")
    return begin, end


@functools.lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


class TimeInterval(_Model):
    """One Alertmanager time interval; every field that is set must match."""

    times: tuple[TimeRange, ...] = ()
    weekdays: tuple[str, ...] = ()
    days_of_month: tuple[str, ...] = ()
    months: tuple[str, ...] = ()
    years: tuple[str, ...] = ()
    location: str = Field("UTC", description="IANA time zone of the fields above.")

    @field_validator("days_of_month", "months", "years", mode="before")
    @classmethod
    def _numbers_as_text(cls, value: object) -> object:
        """`[12]` as `["12"]`: YAML reads a bare number as one (booleans stay refused)."""
        if isinstance(value, (list, tuple)):
            return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        return value

    @field_validator("weekdays")
    @classmethod
    def _weekdays(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            weekday_range(item)
        return value

    @field_validator("days_of_month")
    @classmethod
    def _days(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            day_of_month_range(item)
        return value

    @field_validator("months")
    @classmethod
    def _months(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            month_range(item)
        return value

    @field_validator("years")
    @classmethod
    def _years(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            year_range(item)
        return value

    @field_validator("location")
    @classmethod
    def _location(cls, value: str) -> str:
        if value == "Local":
            raise ValueError("'Local' depends on the host: name an IANA time zone")
        try:
            zone(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value!r} is not an IANA time zone") from exc
        return value

    def _day_matches(self, moment: dt.datetime) -> bool:
        weekday = (moment.weekday() + 1) % 7  # Sunday 0, as the ranges count
        if self.weekdays and not any(
            a <= weekday <= b for a, b in map(weekday_range, self.weekdays)
        ):
            return False
        if self.days_of_month and not any(
            _day_in(moment, *day_of_month_range(item)) for item in self.days_of_month
        ):
            return False
        if self.months and not any(
            a <= moment.month <= b for a, b in map(month_range, self.months)
        ):
            return False
        return not self.years or any(a <= moment.year <= b for a, b in map(year_range, self.years))

    def segment_end(self, now: float) -> float | None:
        """None when `now` is outside this interval; else where the stretch of it that
        holds `now` ends: the end of the time range, or of the local day."""
        local = dt.datetime.fromtimestamp(now, tz=zone(self.location))
        if not self._day_matches(local):
            return None
        midnight = dt.datetime(local.year, local.month, local.day, tzinfo=local.tzinfo)
        minute = local.hour * 60 + local.minute
        if not self.times:
            end_minute = 24 * 60
        else:
            ends = [end for start, end in (r.span() for r in self.times) if start <= minute < end]
            if not ends:
                return None
            end_minute = max(ends)
        # Wall-clock arithmetic, then the zone's offset at that wall time (DST-correct).
        if end_minute == 24 * 60:
            day = midnight.date() + dt.timedelta(days=1)
            end = dt.datetime(day.year, day.month, day.day, tzinfo=local.tzinfo)
        else:
            end = midnight.replace(hour=end_minute // 60, minute=end_minute % 60)
        return end.timestamp()


def _day_in(moment: dt.datetime, begin: int, end: int) -> bool:
    """Alertmanager's day-of-month test: negative days from the month's end, clamped."""
    days = calendar.monthrange(moment.year, moment.month)[1]
    first = days + begin + 1 if begin < 0 else begin
    last = days + end + 1 if end < 0 else end
    if first > days:
        return False
    first, last = max(first, 1), min(last, days)
    return first <= moment.day <= last


class MaintenanceWindow(_Model):
    """A recurring maintenance window: no action on its targets while it is on."""

    name: str = Field(pattern=f"^{NAME_PATTERN}$", description="Shown in the guard's reason.")
    targets: tuple[str, ...] = Field(
        min_length=1, description='Targets (component names) it holds; "*" holds every one.'
    )
    time_intervals: tuple[TimeInterval, ...] = Field(
        min_length=1, description="Alertmanager time intervals: on while any matches."
    )

    @field_validator("targets")
    @classmethod
    def _targets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for target in value:
            if target != "*" and not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", target):
                raise ValueError(f'{target!r} is not a target name (or "*")')
        return value

    def covers(self, target: str) -> bool:
        return "*" in self.targets or target in self.targets

    def until(self, now: float) -> float | None:
        """None when the window is off at `now`; else when it goes off (at the latest
        HORIZON_DAYS ahead)."""
        horizon = now + HORIZON_DAYS * 86_400
        ends = [e for e in (i.segment_end(now) for i in self.time_intervals) if e is not None]
        if not ends:
            return None
        moment = max(ends)
        while moment < horizon:  # one interval may pick up where another ends
            later = [
                e for e in (i.segment_end(moment) for i in self.time_intervals) if e is not None
            ]
            if not later or max(later) <= moment:
                break
            moment = max(later)
        return min(moment, horizon)


def active_window(
    windows: Iterable[MaintenanceWindow], target: str, now: float
) -> tuple[str, float] | None:
    """(name, until) of the maintenance window holding `target` at `now` (of several, the
    one that lasts longest), or None. Pure; the answer for (windows, target, now) is cached:
    the guard asks it for every policy on a target in one iteration."""
    return _active_window(tuple(windows), target, now)


@functools.lru_cache(maxsize=256)
def _active_window(
    windows: tuple[MaintenanceWindow, ...], target: str, now: float
) -> tuple[str, float] | None:
    best: tuple[str, float] | None = None
    for window in windows:
        if not window.covers(target):
            continue
        until = window.until(now)
        if until is not None and (best is None or until > best[1]):
            best = (window.name, until)
    return best


def active_windows(windows: Iterable[MaintenanceWindow], now: float) -> list[dict[str, object]]:
    """Every window on at `now`, for /stats: name, targets, until."""
    rows: list[dict[str, object]] = []
    for window in windows:
        until = window.until(now)
        if until is not None:
            rows.append({"name": window.name, "targets": list(window.targets), "until": until})
    return rows


def check_names(windows: Iterable[MaintenanceWindow]) -> None:
    """Window names are unique (they are what a reason names)."""
    seen: set[str] = set()
    for window in windows:
        if window.name in seen:
            raise ValueError(f"maintenance: the name {window.name!r} is used twice")
        seen.add(window.name)
