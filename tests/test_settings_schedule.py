"""SYNC_SCHEDULE, checked as the Functions host reads it (NCrontab, six fields; shared/config/schedule.py):
a generated matrix of valid and invalid values per field, expressions generated from the
grammar, and arbitrary text that is either accepted or the settings error naming the setting."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.common.errors import SettingsError
from shared.config.schedule import DEFAULT_SCHEDULE, FIELDS, Field, check_schedule
from shared.config.settings import load_settings

GOOD = {
    "GRAPH_AUTH": "none",
    "GRAPH_BASE_URL": "http://127.0.0.1:1/v1.0",
    "SYNC_API_URL": "http://127.0.0.1:1/v1",
    "SYNC_API_CREDENTIAL": "user:pw",
    "SYNC_STATE": "file:/tmp/state",
}


def _with(index: int, text: str) -> str:
    fields = DEFAULT_SCHEDULE.split(" ")
    fields[index] = text
    return " ".join(fields)


def _valid_items(f: Field) -> list[str]:
    span = f.high - f.low + 1
    out = [str(f.low), str(f.high), "*", f"{f.low}-{f.high}", f"*/{span}", "*/1", f"{f.low}/2", f"{f.low}-{f.high}/3",
           f"{f.low},{f.high}", f"{f.high},{f.low}", f"{f.low}-{f.low}", "0" + str(f.high), f"*/{span},{f.low}",
           # NCrontab reads a reversed range as the range (10-5 is 5-10), and takes any step from 1
           f"{f.high}-{f.low}", f"*/{span + 1}", f"{f.low}-{f.high}/{span * 3}"]
    for name in f.names:
        out += [name, name[:3], name[:3].upper(), name.title(), name[:4]]
    if f.names:
        out += [f"{f.names[0][:3]}-{f.names[-1][:3]}", f"{f.names[0][:3]},{f.high}", f"{f.names[1][:3]}-{f.names[2]}/1",
                f"{f.names[2][:3]}-{f.names[1][:3]}"]
    return out


def _invalid_items(f: Field) -> list[str]:
    out = [str(f.high + 1), "99", "100", "1" * 12, "-1", "?", "L", "W", "#", "1#2", "", ",", f"{f.low},", f",{f.low}",
           f"{f.low}-", f"-{f.high}", "*/0", "*/", "/2", "**", "1 -2", "x",
           f"{f.low}-{f.high}-{f.high}", f"{f.low}/2/2", "\u0661", f"{f.low}\t", "FOO", "*/1000000000000"]
    if f.low > 0:
        out.append(str(f.low - 1))
    if f.names:
        out += [f.names[0][:2], f.names[0] + "x"]
    else:
        out += ["Jan", "Mon"]
    return out


VALID = [(i, t) for i, f in enumerate(FIELDS) for t in _valid_items(f)]
INVALID = [(i, t) for i, f in enumerate(FIELDS) for t in _invalid_items(f) if t.strip(" \t") == t and " " not in t]
SPLITTING = [(i, t) for i, f in enumerate(FIELDS) for t in _invalid_items(f) if (i, t) not in INVALID]


@pytest.mark.parametrize("index,text", VALID)
def test_a_valid_value_of_each_field_is_accepted(index, text):
    assert check_schedule(_with(index, text)) == _with(index, text)


@pytest.mark.parametrize("index,text", INVALID)
def test_an_invalid_value_of_each_field_is_a_settings_error_naming_the_field(index, text):
    value = _with(index, text)
    with pytest.raises(SettingsError) as e:
        check_schedule(value)
    assert e.value.setting == "SYNC_SCHEDULE"
    # either the field is named, or (an empty field, a field that splits in two) the count is wrong
    assert f"the {FIELDS[index].name} field" in str(e.value) or "field(s)" in str(e.value), str(e.value)
    assert "a valid value looks like: 0 0 * * * *" in str(e.value)


@pytest.mark.parametrize("index,text", SPLITTING)
def test_a_field_with_whitespace_is_a_settings_error(index, text):
    with pytest.raises(SettingsError):
        check_schedule(_with(index, text))


@pytest.mark.parametrize("value", [
    # the adversary's cases, through load_settings
    "99 0 * * * *", "0 0 25 * * *", "0 0 * 32 * *", "0 0 * * * FOO", "x y z a b c", "25:99:99",
    # five fields (the usual cron without seconds), seven fields (Quartz's year), none
    "0 * * * *", "0 0 0 * * * 2030", "*",
    # ? L W # of Quartz are not NCrontab's
    "0 0 12 ? * *", "0 0 12 L * *", "0 0 12 * * 5L", "0 0 12 * * 1#2", "0 0 12 15W * *",
    # day-of-week 7 (Sunday in some crons) is outside NCrontab's 0-6
    "0 0 0 * * 7",
])
def test_the_adversary_and_other_crons_are_refused(value):
    with pytest.raises(SettingsError) as e:
        load_settings({**GOOD, "SYNC_SCHEDULE": value})
    assert e.value.setting == "SYNC_SCHEDULE"


@pytest.mark.parametrize("value", ["01:00:00", "00:05:00", "24:00:00", "1:00:00", "00:00:30", "1.00:00:00"])
def test_a_timespan_is_refused_on_flex_consumption(value):
    """A TimeSpan works only on an App Service plan; this Function runs on Flex Consumption."""
    with pytest.raises(SettingsError) as e:
        load_settings({**GOOD, "SYNC_SCHEDULE": value})
    assert e.value.setting == "SYNC_SCHEDULE" and "App Service plan" in str(e.value) and "Flex Consumption" in str(e.value)


@pytest.mark.parametrize("value", ["0 */5 * * * *", "0 0 * * * *", "0 0 */2 * * *", "0 0 9-17 * * *", "0 30 9 * * *",
                                   "0 30 9 * * 1-5", "0 30 9 * Jan Mon", "5-7 * * * * *", "5,8,10 * * * * *",
                                   "  0 0 * * * *  ", "0  0 * * * *"])
def test_the_documented_examples_are_accepted(value):
    """Microsoft's examples (the timer trigger reference), and extra spaces, which NCrontab skips."""
    assert load_settings({**GOOD, "SYNC_SCHEDULE": value}).schedule == value.strip()


def _item(f: Field) -> st.SearchStrategy[str]:
    value = st.integers(f.low, f.high)
    rng = st.tuples(value, value).map(sorted).map(lambda p: f"{p[0]}-{p[1]}")
    base = st.one_of(st.just("*"), value.map(str), rng)
    step = st.one_of(st.just(""), st.integers(1, f.high - f.low + 1).map(lambda s: f"/{s}"))
    return st.tuples(base, step).map("".join)


EXPRESSION = st.tuples(*(st.lists(_item(f), min_size=1, max_size=4).map(",".join) for f in FIELDS)).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(EXPRESSION)
def test_every_expression_of_the_grammar_is_accepted(value):
    assert check_schedule(value) == value


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=30), st.text(alphabet="0123456789*/-, ?LW#JanMo:", max_size=30)))
def test_any_text_is_accepted_or_the_settings_error(value):
    value = value.strip() or DEFAULT_SCHEDULE
    try:
        check_schedule(value)
    except SettingsError as exc:
        assert exc.setting == "SYNC_SCHEDULE"
    else:
        assert len([f for f in value.split(" ") if f]) == 6
