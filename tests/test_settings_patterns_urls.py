"""Two classes of malformed settings, over generated values: an EXCLUDE_ADDRESS_PATTERNS
expression that Python's ``re`` cannot compile (for any reason, not only ``re.error``), and a
URL setting that no client could call (a port outside 1-65535, a host that is no DNS name,
spaces or control characters). Each is a ``SettingsError`` naming the setting, raised by
``load_settings``, before any network call (docs/sync-rules.md, "Settings")."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shared.common.errors import SettingsError
from shared.config.settings import load_settings
from shared.model.rules import PATTERNS_SETTING, parse_rules
from tests.test_settings import GOOD  # the settings every test here starts from

# --- EXCLUDE_ADDRESS_PATTERNS -----------------------------------------------------------------

REGEXISH = st.text(alphabet="()[]{}?*+|\\^$.-:=!<>Pa@z019 ,#'", max_size=40)


def _judge(raw: str) -> None:
    """``raw`` either parses (every item compiles, as ``re`` compiles it) or is the settings
    error that names the setting and quotes the item that failed; nothing else escapes."""
    items = [p.strip() for p in raw.split(",") if p.strip()]
    try:
        rules = parse_rules(None, None, raw)
    except SettingsError as exc:
        assert exc.setting == PATTERNS_SETTING and PATTERNS_SETTING in str(exc)
        assert not items or any(f"'{item}'" in str(exc) for item in items), str(exc)[:300]
        return
    assert [p.pattern for p in rules.exclude_address_patterns] == items
    assert all(p.flags & re.IGNORECASE for p in rules.exclude_address_patterns)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), REGEXISH))
def test_any_pattern_text_parses_or_is_the_settings_error_quoting_it(raw):
    _judge(raw)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=3000), st.sampled_from(["(", "(?:", "(?=", "[", "(?P<g>"]))
def test_deep_nesting_parses_or_is_the_settings_error(depth, opener):
    closer = "]" if opener == "[" else ")"
    _judge(opener * depth + "x" + closer * depth + "@contoso\\.com")


@settings(max_examples=80, deadline=None)
@given(st.integers(min_value=0, max_value=10**30), st.integers(min_value=0, max_value=10**30),
       st.sampled_from(["x{%d}", "x{%d,}", "x{,%d}", "x{%d,%d}", "(ab){%d}?", "[a-z]{%d,%d}+"]))
def test_huge_repeat_counts_parse_or_are_the_settings_error(low, high, shape):
    _judge((shape % ((low, high) if shape.count("%d") == 2 else (low,))) + "@contoso\\.com")


@pytest.mark.parametrize("pattern,kind", [
    ("noreply{99999999999}@x", "OverflowError"),
    ("(" * 1200 + "x" + ")" * 1200, "RecursionError"),
    ("a**", "multiple repeat"),
    ("(unclosed", "missing )"),
])
def test_each_kind_of_compile_failure_is_named(pattern, kind):
    """The examples behind the class: ``re`` refuses these with four different exceptions or
    messages; each is the same settings error, which quotes the pattern and says why."""
    with pytest.raises(SettingsError) as e:
        load_settings({**GOOD, PATTERNS_SETTING: f"ok@contoso\\.com,{pattern}"})
    assert e.value.setting == PATTERNS_SETTING and f"'{pattern}'" in str(e.value) and kind in str(e.value)
    assert e.value.__cause__ is None and e.value.__context__ is None  # no re internals riding along


# --- URL settings ------------------------------------------------------------------------------

# setting -> (extra settings that make it read, a valid URL with {port} where the port goes)
URL_SETTINGS = {
    "GRAPH_BASE_URL": ({}, "http://127.0.0.1{port}/v1.0"),
    "SYNC_API_URL": ({}, "http://127.0.0.1{port}/v1"),
    "EXO_BASE_URL": ({"EXO_MODE": "augment"}, "http://127.0.0.1{port}"),
    "KEY_VAULT_URL": ({}, "https://kv-sync.vault.azure.net{port}/"),
    "AzureWebJobsStorage__blobServiceUri": ({"SYNC_STATE": "blob:sync-state"}, "https://acct.blob.core.windows.net{port}"),
    "AzureWebJobsStorage__serviceUri": ({"SYNC_STATE": "blob:sync-state"}, "https://acct.blob.core.windows.net{port}"),
}
BAD_PORTS = [":99999", ":65536", ":abc", ":0", ":-1", ":", ":+80", ": 80", ":8o", ":\u0668\u0660", ":1.5", ":0x50", ":123456"]
GOOD_PORTS = ["", ":1", ":443", ":8080", ":65535", ":00443"]
BAD_HOSTS = ["exa_mple.com", "-lead.example.com", "trail-.example.com", ".example.com", "example..com", "ex%41mple.com",
             "xn--", "a" * 64 + ".example.com", "[::1", "[not-v6]"]
BAD_TEXT = ["https://exa mple.com/", "https://example.com/a b", "https://example.com/a\nb", "https://ex\x00ample.com", "https://ex\u2028.com",
            "//example.com/", "example.com", "ftp://example.com/", "https://", "https:///path", "https://user:secret-canary@example.com/"]


def _error(env: dict[str, str]) -> SettingsError:
    with pytest.raises(SettingsError) as e:
        load_settings(env)
    return e.value


@pytest.mark.parametrize("setting,port", list(itertools.product(URL_SETTINGS, BAD_PORTS)))
def test_a_port_outside_1_to_65535_is_a_settings_error_naming_the_setting(setting, port):
    extra, url = URL_SETTINGS[setting]
    e = _error({**GOOD, **extra, setting: url.format(port=port)})
    assert e.setting == setting
    assert ("port" in str(e) and "1-65535" in str(e)) or ("spaces" in str(e) and " " in port)
    assert "a valid value looks like" in str(e)


@pytest.mark.parametrize("setting,port", list(itertools.product(URL_SETTINGS, GOOD_PORTS)))
def test_a_port_in_range_is_accepted(setting, port):
    extra, url = URL_SETTINGS[setting]
    load_settings({**GOOD, **extra, setting: url.format(port=port)})


@pytest.mark.parametrize("setting,host", list(itertools.product(URL_SETTINGS, BAD_HOSTS)))
def test_a_host_that_is_no_dns_name_is_a_settings_error(setting, host):
    extra, url = URL_SETTINGS[setting]
    good_host = re.match(r"https?://([^/{]+)", url)[1]
    e = _error({**GOOD, **extra, setting: url.replace(good_host, host).format(port="")})
    assert e.setting == setting


@pytest.mark.parametrize("setting,value", list(itertools.product(URL_SETTINGS, BAD_TEXT)))
def test_text_that_is_no_callable_url_is_a_settings_error(setting, value):
    extra, _ = URL_SETTINGS[setting]
    e = _error({**GOOD, **extra, setting: value})
    assert e.setting == setting
    assert "secret-canary" not in str(e)


def test_a_storage_account_name_is_checked():
    env = {**GOOD, "SYNC_STATE": "blob:sync-state"}
    for bad in ("ab", "a" * 25, "My-Storage", "acct.evil.com", "acct/x"):
        assert _error({**env, "AzureWebJobsStorage__accountName": bad}).setting == "AzureWebJobsStorage__accountName"
    assert load_settings({**env, "AzureWebJobsStorage__accountName": "mystorage01"}).storage_blob_uri == "https://mystorage01.blob.core.windows.net"


# "/", "?" and "#" end the authority (RFC 3986): what follows one of them is the path, the query
# or the fragment, not the port, so port text never holds them (a generated "1/" was port 1 and
# a path, which the oracle below took for a bad port: the test failed by chance).
PORT_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="/?#"), max_size=12)


@settings(max_examples=300, deadline=None)
@given(PORT_TEXT, st.sampled_from(sorted(URL_SETTINGS)))
@example("1 ", "AzureWebJobsStorage__blobServiceUri")  # found by chance: the value is read stripped
@example("1 ", "GRAPH_BASE_URL")  # mid-URL the blank stays: not a port
def test_any_port_text_is_accepted_only_when_it_is_a_port(port, setting):
    """Whatever follows the colon up to the end of the authority: accepted exactly when it is
    ASCII digits naming 1-65535, else the settings error naming the setting (never another
    exception)."""
    extra, url = URL_SETTINGS[setting]
    value = url.format(port=":" + port)
    try:
        load_settings({**GOOD, **extra, setting: value})
    except SettingsError as exc:
        assert exc.setting == setting
        ok = False
    else:
        ok = True
    # A setting's value is read stripped (shared/config/values.py): where the port ends the URL,
    # its trailing whitespace is not part of it ("...:1 " is port 1).
    seen = port.rstrip() if url.endswith("{port}") else port
    assert ok == bool(re.fullmatch(r"[0-9]{1,5}", seen) and 1 <= int(seen) <= 65535)


@pytest.mark.parametrize("pattern", ["[[a]x@contoso.com", "[0-9--x]@contoso.com", "[a&&b]@contoso.com", "[a||b]@contoso.com", "[a~~b]@contoso.com"])
def test_a_pattern_python_warns_about_is_kept_and_the_warning_logged_naming_the_setting(pattern, caplog):
    """re's FutureWarning (a possible nested set, set difference, intersection, union or
    symmetric difference) is not an error: the pattern is kept, and the warning is one log line
    naming the setting, not Python's warning text on stderr. Each pattern here is new to the
    process (re caches what it compiled, and warns only the first time)."""
    import warnings

    unique = pattern + f"|never{abs(hash((pattern, id(caplog))))}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning that escaped would fail here
        rules = parse_rules(None, None, unique)
    assert [p.pattern for p in rules.exclude_address_patterns] == [unique]
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 1 and PATTERNS_SETTING in lines[0] and unique in lines[0] and "FutureWarning" not in lines[0]


def test_a_pattern_python_warns_about_and_then_refuses_is_the_settings_error_alone(caplog):
    """``[a--b]`` draws re's FutureWarning (a possible set difference) and then fails to compile:
    the settings error, and no warning on top of it."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(SettingsError, match=r"EXCLUDE_ADDRESS_PATTERNS.*\[a--b\]"):
            parse_rules(None, None, f"[a--b]@contoso.com|never{id(caplog)}")
    assert [r for r in caplog.records if r.levelname == "WARNING"] == []


# A base URL takes the request's path after it (``{GRAPH_BASE_URL}/users/delta``,
# ``{SYNC_API_URL}/domains``, ``{EXO_BASE_URL}/adminapi/...``): a query string or a fragment in
# it, even an empty one, sends every request somewhere else (".../v1#x/domains" is ".../v1").
QUERY_OR_FRAGMENT = ["?", "?api-version=1", "#", "#frag", "?a=b#c"]


@pytest.mark.parametrize("setting,tail", list(itertools.product(URL_SETTINGS, QUERY_OR_FRAGMENT)))
def test_a_base_url_with_a_query_or_fragment_is_a_settings_error_naming_the_setting(setting, tail):
    extra, url = URL_SETTINGS[setting]
    e = _error({**GOOD, **extra, setting: url.format(port="") + tail})
    assert e.setting == setting
    assert "a valid value looks like" in str(e)
