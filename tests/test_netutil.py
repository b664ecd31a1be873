"""Retry-After parsing and backoff, shared by the Graph reader and the sync API client."""

from __future__ import annotations

import datetime as dt
from email.utils import format_datetime

import pytest

from shared.common.netutil import jittered_backoff, parse_retry_after


@pytest.mark.parametrize("raw, expected", [("5", 5.0), (" 2.5 ", 2.5), ("0", 0.0), ("-3", 0.0), ("nan", None), ("NaN", None),
                                           ("soon", None), ("", None)])
def test_retry_after_values(raw, expected):
    assert parse_retry_after(raw) == expected


def test_retry_after_http_dates():
    past = format_datetime(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5), usegmt=True)
    future = format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120), usegmt=True)
    assert parse_retry_after(past) == 0.0
    assert 100 < parse_retry_after(future) <= 120


def test_backoff_grows_with_jitter_and_respects_the_cap():
    for attempt in range(1, 8):
        d = jittered_backoff(1.0, attempt, cap=10.0)
        assert 0.5 * min(10.0, 2 ** (attempt - 1)) <= d <= min(10.0, 2 ** (attempt - 1))
    assert jittered_backoff(0.5, 20) > 1000  # no cap unless asked for
