"""``SYNC_SCHEDULE``: the timer's NCRONTAB expression, checked as the Functions host reads it.

Azure Functions parses a timer schedule with the NCrontab library, six fields separated by
spaces (docs/sync-rules.md, "Settings"; Microsoft's "Timer trigger for Azure Functions"):

    {second} {minute} {hour} {day} {month} {day-of-week}

    field        values
    second       0-59
    minute       0-59
    hour         0-23
    day          1-31
    month        1-12, or an English month name (January..December, case-insensitive,
                 three letters or more of it: Jan, janu, JANUARY)
    day-of-week  0-6 with 0 for Sunday, or an English day name (Sun, Monday, ...)

Each field is a comma-separated list of items; an item is ``*``, a value, or a range
``low-high`` (NCrontab reads a reversed one, ``10-5``, as ``5-10``), optionally followed by
``/step`` (a whole number from 1; one larger than the field matches its first value only;
``5/15`` is ``5-max/15``). NCrontab has no ``?``, ``L``, ``W`` or ``#``: they are
refused here, as the host would refuse them.

The TimeSpan form (``hh:mm:ss``) is refused too: the Functions host accepts it only on an App
Service plan, and this Function runs on the Flex Consumption plan (infra/app/function-app.bicep),
where the timer would not start. No Python library is installed that parses the six-field
NCrontab form (croniter is not a dependency, and its seconds field is a seventh, trailing one),
so the check is this module's."""

from __future__ import annotations

import re
from typing import NamedTuple

from ..common.errors import SettingsError

SETTING = "SYNC_SCHEDULE"
DEFAULT_SCHEDULE = "0 0 * * * *"
EXAMPLE = f"{DEFAULT_SCHEDULE} (second minute hour day month day-of-week; e.g. 0 */15 * * * * every 15 minutes, 0 30 2 * * Mon-Fri at 02:30 on weekdays)"

_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november", "december")
_DAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")


class Field(NamedTuple):
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()


FIELDS = (
    Field("second", 0, 59), Field("minute", 0, 59), Field("hour", 0, 23), Field("day", 1, 31),
    Field("month", 1, 12, _MONTHS), Field("day-of-week", 0, 6, _DAYS),
)

_ITEM = re.compile(r"(?P<base>\*|(?P<a>[0-9A-Za-z]+)(?:-(?P<b>[0-9A-Za-z]+))?)(?:/(?P<step>[0-9]+))?")
_TIMESPAN = re.compile(r"[0-9.:]+")


def check_schedule(value: str) -> str:
    """``value`` (stripped, not blank) when it is a schedule the Functions host accepts on the
    Flex Consumption plan; else ``SettingsError`` naming SYNC_SCHEDULE, the field and what is
    wrong, with a valid example."""
    if ":" in value and _TIMESPAN.fullmatch(value):
        raise SettingsError(SETTING, f"{value!r} is a TimeSpan interval, which Azure Functions accepts only on an App Service plan; "
                            "this Function runs on the Flex Consumption plan: use an NCRONTAB expression", EXAMPLE)
    fields = [f for f in value.split(" ") if f]
    if len(fields) != len(FIELDS):
        raise SettingsError(SETTING, f"{value!r} has {len(fields)} field(s); an NCRONTAB expression has six, separated by spaces", EXAMPLE)
    for text, spec in zip(fields, FIELDS, strict=True):
        problem = field_problem(text, spec)
        if problem:
            raise SettingsError(SETTING, f"{value!r}: the {spec.name} field {text!r} {problem}", EXAMPLE)
    return value


def field_problem(text: str, spec: Field) -> str | None:
    """Why ``text`` is not a valid NCRONTAB ``spec`` field, or None."""
    for item in text.split(","):
        m = _ITEM.fullmatch(item)
        if m is None:
            return f"has {item!r}, which is not *, a value, or a range low-high, with an optional /step"
        step = m["step"]
        if step is not None and not (len(step) <= 9 and int(step) >= 1):
            return f"has the step {step}; a step is a whole number from 1"
        if m["base"] == "*":
            continue
        low = _value(m["a"], spec)
        high = low if m["b"] is None else _value(m["b"], spec)
        if low is None or high is None:
            return f"has {item!r}, outside {_allowed(spec)}"
    return None  # a reversed range (10-5) is read by NCrontab as 5-10, so it is a range the host takes


def _value(text: str, spec: Field) -> int | None:
    """A number in the field's range, or a name (three letters or more of it); None otherwise."""
    if text.isdigit():
        return int(text) if len(text) <= 9 and spec.low <= int(text) <= spec.high else None
    word = text.lower()
    if len(word) >= 3:
        for i, name in enumerate(spec.names):
            if name.startswith(word):
                return spec.low + i
    return None


def _allowed(spec: Field) -> str:
    text = f"{spec.low}-{spec.high}"
    if spec.names:
        text += f" or a name ({spec.names[0][:3].title()}-{spec.names[-1][:3].title()})"
    return text
