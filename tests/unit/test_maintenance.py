"""Maintenance windows (loop/maintenance.py): Alertmanager's time interval semantics, the
config's errors naming the field, and the maintenance guard."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from builders import action, policy
from mape_k.config import Settings, load_settings
from mape_k.errors import ConfigError
from mape_k.loop import guards as g
from mape_k.loop.maintenance import (
    HORIZON_DAYS,
    MaintenanceWindow,
    TimeInterval,
    active_window,
    active_windows,
)
from mape_k.models import ActionType, GuardVerdict

UTC = dt.UTC
BERLIN = dt.timezone(dt.timedelta(hours=1))  # Central European winter time


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, tz=UTC) -> float:
    return dt.datetime(year, month, day, hour, minute, tzinfo=tz).timestamp()


def window(targets=("charter",), name="nightly", **interval: Any) -> MaintenanceWindow:
    return MaintenanceWindow.model_validate(
        {"name": name, "targets": list(targets), "time_intervals": [interval]}
    )


def on(w: MaintenanceWindow, moment: float, target: str = "charter") -> bool:
    return active_window([w], target, moment) is not None


# --- the time interval semantics ------------------------------------------------------


def test_times_include_the_start_and_exclude_the_end():
    w = window(times=[{"start_time": "09:00", "end_time": "17:00"}])
    assert not on(w, ts(2026, 12, 2, 8, 59))
    assert active_window([w], "charter", ts(2026, 12, 2, 9, 0)) == (
        "nightly",
        ts(2026, 12, 2, 17, 0),
    )
    assert on(w, ts(2026, 12, 2, 16, 59) + 59.9)
    assert not on(w, ts(2026, 12, 2, 17, 0))


def test_weekday_ranges_are_inclusive_and_single_days_count():
    w = window(weekdays=["monday:wednesday", "Saturday"])
    # 2026-11-29 is a Sunday.
    days = {day: on(w, ts(2026, 11, 29, 12) + day * 86_400) for day in range(7)}
    assert days == {0: False, 1: True, 2: True, 3: True, 4: False, 5: False, 6: True}


def test_a_weekday_window_lasts_until_its_last_day_ends():
    w = window(weekdays=["monday:friday"])
    assert active_window([w], "charter", ts(2026, 12, 2, 10)) == (
        "nightly",
        ts(2026, 12, 5),  # Saturday 00:00
    )


def test_negative_days_of_month_count_from_its_end():
    w = window(days_of_month=["-1"])
    assert on(w, ts(2026, 2, 28, 12))  # 28 days in February 2026
    assert not on(w, ts(2026, 2, 27, 12))
    assert on(w, ts(2028, 2, 29, 12))
    assert not on(w, ts(2028, 2, 28, 12))
    assert on(w, ts(2026, 12, 31, 0))
    assert not on(w, ts(2026, 12, 30, 23, 59))
    last_week = window(days_of_month=["-7:-1"])
    assert on(last_week, ts(2026, 4, 24))
    assert not on(last_week, ts(2026, 4, 23))
    mixed = window(days_of_month=["25:-1"])
    assert on(mixed, ts(2026, 2, 28))
    assert not on(mixed, ts(2026, 2, 24))


def test_a_day_beyond_the_month_is_skipped_and_a_range_is_clamped():
    assert not on(window(days_of_month=["31"]), ts(2026, 4, 30, 12))  # April has 30
    assert on(window(days_of_month=["29:31"]), ts(2026, 4, 30, 12))


def test_months_and_years_by_number_and_name():
    w = window(months=["1:3", "december"], years=["2026:2027"])
    assert on(w, ts(2026, 2, 10))
    assert on(w, ts(2027, 12, 31, 23, 59))
    assert window(months=[12], years=[2026]) == window(months=["12"], years=["2026"])
    assert not on(w, ts(2026, 4, 1))
    assert not on(w, ts(2028, 1, 1))


def test_every_field_must_match_and_any_interval_does():
    both = window(weekdays=["saturday"], times=[{"start_time": "02:00", "end_time": "04:00"}])
    assert on(both, ts(2026, 12, 5, 3))
    assert not on(both, ts(2026, 12, 4, 3))
    assert not on(both, ts(2026, 12, 5, 5))
    either = MaintenanceWindow.model_validate(
        {
            "name": "w",
            "targets": ["charter"],
            "time_intervals": [{"weekdays": ["saturday"]}, {"weekdays": ["sunday"]}],
        }
    )
    # Saturday then Sunday: one stretch, ending Monday 00:00.
    assert active_window([either], "charter", ts(2026, 12, 5, 12)) == ("w", ts(2026, 12, 7))


def test_the_location_sets_the_clock_the_fields_are_read_on():
    w = window(times=[{"start_time": "09:00", "end_time": "17:00"}], location="Europe/Berlin")
    assert on(w, ts(2026, 12, 2, 8, 0))  # 09:00 in Berlin
    assert not on(w, ts(2026, 12, 2, 7, 59))
    assert active_window([w], "charter", ts(2026, 12, 2, 12)) == (
        "nightly",
        ts(2026, 12, 2, 17, tz=BERLIN),
    )
    # Summer time: the same wall clock is 07:00 UTC.
    assert on(w, ts(2026, 7, 1, 7, 0))
    assert not on(w, ts(2026, 7, 1, 6, 59))
    # The weekday is Berlin's too: Saturday 00:30 there is Friday 23:30 UTC.
    saturday = window(weekdays=["saturday"], location="Europe/Berlin")
    assert on(saturday, ts(2026, 12, 4, 23, 30))
    assert not on(saturday, ts(2026, 12, 4, 22, 59))


def test_end_of_day_and_an_always_on_window_stops_at_the_horizon():
    w = window(times=[{"start_time": "22:00", "end_time": "24:00"}])
    assert active_window([w], "charter", ts(2026, 12, 2, 23)) == ("nightly", ts(2026, 12, 3))
    always = window()
    now = ts(2026, 12, 2, 23)
    assert active_window([always], "charter", now) == ("nightly", now + HORIZON_DAYS * 86_400)


def test_targets_and_the_star():
    mine = window(targets=("db",), times=[{"start_time": "00:00", "end_time": "24:00"}])
    assert not on(mine, ts(2026, 12, 2, 12), "charter")
    assert on(mine, ts(2026, 12, 2, 12), "db")
    assert on(window(targets=("*",)), ts(2026, 12, 2, 12), "anything")


def test_the_longest_of_two_windows_on_a_target_is_reported_and_stats_list_them():
    short = window(name="short", times=[{"start_time": "10:00", "end_time": "11:00"}])
    long = window(name="long", times=[{"start_time": "09:00", "end_time": "13:00"}])
    off = window(name="off", weekdays=["sunday"])
    now = ts(2026, 12, 2, 10, 30)  # a Wednesday
    assert active_window([short, long, off], "charter", now) == ("long", ts(2026, 12, 2, 13))
    assert active_windows([short, long, off], now) == [
        {"name": "short", "targets": ["charter"], "until": ts(2026, 12, 2, 11)},
        {"name": "long", "targets": ["charter"], "until": ts(2026, 12, 2, 13)},
    ]


# --- config errors name the field -----------------------------------------------------


def load(tmp_path: Path, text: str) -> Settings:
    file = tmp_path / "mape_k.yaml"
    file.write_text(text)
    return load_settings(file, {})[0]


@pytest.mark.parametrize(
    ("interval", "field", "says"),
    [
        ("{weekdays: [friday:monday]}", "weekdays", "start day is after the end day"),
        ("{weekdays: [someday]}", "weekdays", "not a weekday"),
        ("{days_of_month: ['0']}", "days_of_month", "not a day of the month"),
        ("{days_of_month: ['-1:5']}", "days_of_month", "must be negative"),
        ("{days_of_month: ['10:2']}", "days_of_month", "before the start day"),
        ("{months: [13]}", "months", "not a month"),
        ("{months: ['march:january']}", "months", "before the start month"),
        ("{years: ['2027:2026']}", "years", "before the start year"),
        ("{location: Mars/Olympus}", "location", "not an IANA time zone"),
        ("{location: Local}", "location", "depends on the host"),
        ("{times: [{start_time: '17:00', end_time: '09:00'}]}", "times.0", "must be after"),
        ("{times: [{start_time: '9:00', end_time: '10:00'}]}", "times.0.start_time", "HH:MM"),
        ("{times: [{start_time: '09:00', end_time: '24:30'}]}", "times.0.end_time", "24:00"),
        ("{weekday: [monday]}", "weekday", "unknown key"),
        ("{months: [true]}", "months.0", "valid string"),
    ],
)
def test_a_bad_time_interval_is_a_one_line_error_naming_its_field(tmp_path, interval, field, says):
    text = f"maintenance:\n  - name: w\n    targets: [charter]\n    time_intervals: [{interval}]\n"
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    message = str(caught.value)
    assert "\n" not in message
    assert f"maintenance.0.time_intervals.0.{field}" in message
    assert says in message


def test_window_names_are_unique_and_targets_are_names(tmp_path):
    one = "  - {name: w, targets: [charter], time_intervals: [{weekdays: [monday]}]}\n"
    with pytest.raises(ConfigError, match="used twice"):
        load(tmp_path, "maintenance:\n" + one + one)
    with pytest.raises(ConfigError, match=r"maintenance\.0\.targets.*not a target name"):
        load(tmp_path, "maintenance:\n  - {name: w, targets: ['a b'], time_intervals: [{}]}\n")
    with pytest.raises(ConfigError, match=r"maintenance\.0\.time_intervals"):
        load(tmp_path, "maintenance:\n  - {name: w, targets: [charter], time_intervals: []}\n")


def test_a_good_window_loads(tmp_path):
    settings = load(
        tmp_path,
        "maintenance:\n"
        "  - name: db-patching\n"
        "    targets: ['*']\n"
        "    time_intervals:\n"
        "      - times: [{start_time: '02:00', end_time: '04:00'}]\n"
        "        weekdays: ['saturday:saturday']\n"
        "        location: Europe/Berlin\n",
    )
    [loaded] = settings.maintenance
    assert loaded.time_intervals[0] == TimeInterval.model_validate(
        {
            "times": [{"start_time": "02:00", "end_time": "04:00"}],
            "weekdays": ["saturday:saturday"],
            "location": "Europe/Berlin",
        }
    )


def test_changes_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"changes\.rollback_causes.*not a cause name"):
        load(tmp_path, "changes: {rollback_causes: [Bad-Name]}\n")
    with pytest.raises(ConfigError, match=r"changes\.window_s"):
        load(tmp_path, "changes: {window_s: 0}\n")


# --- the guard ------------------------------------------------------------------------


def test_the_maintenance_guard_delays_every_policy_on_a_target_inside_a_window():
    w = window(name="db-patching", times=[{"start_time": "02:00", "end_time": "04:00"}])
    inside = g.GuardContext(now=ts(2026, 12, 5, 3), maintenance=(w,))
    restart = policy(ActionType.RESTART_SERVICE)
    decision = g.maintenance_guard(restart, inside)
    assert decision.verdict is GuardVerdict.DELAY
    assert decision.reason == "maintenance window db-patching until 2026-12-05T04:00:00Z"
    assert decision.until == ts(2026, 12, 5, 4)
    scale = policy(action(ActionType.SCALE_UP, delta=1))
    assert g.maintenance_guard(scale, inside).verdict is GuardVerdict.DELAY
    elsewhere = policy(ActionType.RESTART_SERVICE, target="db")
    assert g.maintenance_guard(elsewhere, inside).verdict is GuardVerdict.ALLOW
    outside = g.GuardContext(now=ts(2026, 12, 5, 4), maintenance=(w,))
    assert g.maintenance_guard(restart, outside).verdict is GuardVerdict.ALLOW
    assert g.maintenance_guard in g.DEFAULT_GUARDS
    assert not g.allowed(g.evaluate(restart, inside))
