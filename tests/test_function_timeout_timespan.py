"""``functionTimeout`` is a .NET TimeSpan, read by the Functions host with ``TimeSpan.Parse``:
``[ws][-]{ d | [d.]hh:mm[:ss[.ff]] }[ws]`` (.NET, "System.TimeSpan.Parse method": a lone number is
days; otherwise hours and minutes are required and seconds and their fraction optional; hh 0-23,
mm and ss 0-59, ff one to seven digits). Each form the host accepts sets the timer's time limit
from the same duration; a value the host refuses keeps the plan's default, with a warning."""

from __future__ import annotations

import json

import pytest

from shared.config.host import function_timeout_seconds, run_time_limit

ACCEPTED = {
    "01:00": 3600,  # hh:mm: one hour, not a typo
    "1:2": 3720,
    "00:45": 2700,
    "2": 2 * 86400,  # a lone number is days
    "0.01:30": 5400,
    "1.00:00": 86400,
    "00:30:00": 1800,
    " 00:30:00 ": 1800,
    "01:02:03.5": 3723.5,
    "00:00:01.1234567": 1.1234567,
    "1.02:03:04": 93784,
}
REFUSED = ["soon", "00:61:00", "00:00:60", "25:00", "1:2:3:4:5", "00:30:00.12345678", "1.2", ":30", "", "1e3", "0", "00:00"]


@pytest.mark.parametrize(("text", "seconds"), ACCEPTED.items(), ids=ACCEPTED.keys())
def test_each_timespan_form_the_host_accepts_is_its_duration(tmp_path, text, seconds):
    path = tmp_path / "host.json"
    path.write_text(json.dumps({"functionTimeout": text}))
    assert function_timeout_seconds({}, path) == pytest.approx(seconds)
    assert function_timeout_seconds({"AzureFunctionsJobHost__functionTimeout": text}, tmp_path / "none.json") == pytest.approx(seconds)
    assert run_time_limit({}, path) == pytest.approx(seconds - min(120, seconds / 10))


@pytest.mark.parametrize("text", REFUSED)
def test_a_value_that_is_no_timespan_or_no_time_keeps_the_default_and_says_so(tmp_path, caplog, text):
    assert function_timeout_seconds({"AzureFunctionsJobHost__functionTimeout": text}, tmp_path / "none.json") == 30 * 60
    assert "AzureFunctionsJobHost__functionTimeout" in caplog.text
