"""The strict sync API receiver (devstack.sync_receiver) against every rule of docs/sync-api.md.

The receiver is what the product is tested against, so a rule it fails to
enforce is a product bug that no test would catch. These tests talk to it over
real HTTP on loopback, as the product does.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.receiver_addresses import address_problem
from devstack.sync_receiver import SyncReceiver

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ["contoso.com", "Fabrikam.com", "bücher.de"]
OTHER = {"taken@contoso.com"}
TLS = ssl.create_default_context()  # built once: httpx would load the CA bundle for every client


def get(url: str, **kwargs: Any) -> httpx.Response:
    """A one-off GET without a shared client (its own connection, its own auth)."""
    return httpx.get(url, verify=TLS, **kwargs)


def http_client(base_url: str, **kwargs: Any) -> httpx.Client:
    return httpx.Client(base_url=base_url, verify=TLS, timeout=10, **kwargs)


class FakeClock:
    """A settable clock, so replacement expiry is tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def receiver(clock: FakeClock) -> Iterator[SyncReceiver]:
    r = SyncReceiver(domains=DOMAINS, forbidden_credential="viewer:pw", other_account_addresses=OTHER, clock=clock)
    r.start()
    yield r
    r.stop()


@pytest.fixture
def client(receiver: SyncReceiver) -> Iterator[httpx.Client]:
    with http_client(receiver.base_url, auth=("sync", "secret")) as c:
        yield c


def key() -> str:
    return uuid.uuid4().hex


def change(client: httpx.Client, dataset: str, body: Any, idem: str | None = None) -> httpx.Response:
    """POST /changes with a fresh Idempotency-Key unless one is given."""
    headers = {"Idempotency-Key": idem or key(), "Content-Type": "application/json"}
    return client.post(f"/datasets/{dataset}/changes", content=json.dumps(body).encode(), headers=headers)


def ok(client: httpx.Client, dataset: str, body: Any) -> dict[str, Any]:
    response = change(client, dataset, body)
    assert response.status_code == 200, response.text
    return response.json()


def codes(answer: dict[str, Any]) -> list[tuple[Any, str]]:
    return [(r["key"], r["code"]) for r in answer["rejected"]]


def group(gid: str, *parents: str, name: str | None = None) -> dict[str, Any]:
    return {"id": gid, "name": name or gid.upper(), "parentIds": list(parents)}


def user(uid: str, address: str, *groups: str) -> dict[str, Any]:
    return {"id": uid, "address": address, "groupIds": list(groups)}


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert set(problem) == {"type", "title", "status", "detail"}
    assert problem["status"] == status
    return problem


# ---- transport ------------------------------------------------------------------------


def test_domains_are_lowercased_a_labels(client: httpx.Client) -> None:
    response = client.get("/domains")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"domains": ["contoso.com", "fabrikam.com", "xn--bcher-kva.de"]}


@pytest.mark.parametrize("auth", [None, ("sync", "wrong"), ("other", "secret")])
def test_missing_or_wrong_basic_credentials_are_401(receiver: SyncReceiver, auth: tuple[str, str] | None) -> None:
    response = get(receiver.base_url + "/domains", auth=auth)
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Basic")


@pytest.mark.parametrize("header", ["Bearer sync:secret", "Basic !!!notbase64", "Basic", "Digest abc"])
def test_malformed_authorization_is_401(receiver: SyncReceiver, header: str) -> None:
    assert_problem(get(receiver.base_url + "/domains", headers={"Authorization": header}), 401)


def test_forbidden_credential_is_403(receiver: SyncReceiver) -> None:
    assert_problem(get(receiver.base_url + "/domains", auth=("viewer", "pw")), 403)


def test_bearer_token_credential() -> None:
    with SyncReceiver(domains=["contoso.com"], credential="tok123", forbidden_credential="weak") as r:
        assert get(r.base_url + "/domains", headers={"Authorization": "Bearer tok123"}).status_code == 200
        assert_problem(get(r.base_url + "/domains", headers={"Authorization": "Bearer nope"}), 401)
        assert_problem(get(r.base_url + "/domains", headers={"Authorization": "Bearer weak"}), 403)
        basic = "Basic " + base64.b64encode(b"tok123").decode()
        assert_problem(get(r.base_url + "/domains", headers={"Authorization": basic}), 401)


def test_unknown_dataset_path_and_method(client: httpx.Client) -> None:
    assert_problem(client.get("/datasets/mailboxes/records"), 404)
    assert_problem(change(client, "Users", {"upsert": []}), 404)
    assert_problem(client.get("/nothing"), 404)
    assert_problem(client.get("/domains/"), 404)
    wrong = client.delete("/datasets/users/changes")
    assert_problem(wrong, 405)
    assert wrong.headers["Allow"] == "POST"  # RFC 9110 §15.5.6: a 405 names the methods the resource allows
    assert client.post("/datasets/users/replacements/r1").headers["Allow"] == "DELETE"  # abandon
    head = client.head("/domains")
    assert head.status_code == 405 and head.content == b"" and head.headers["Allow"] == "GET"
    assert client.get("/domains").status_code == 200  # framing intact after HEAD


def test_keep_alive_serves_many_requests_on_one_connection(receiver: SyncReceiver) -> None:
    port = int(receiver.base_url.split(":")[2].split("/")[0])
    auth = base64.b64encode(b"sync:secret").decode()
    request = f"GET /v1/domains HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        reader = sock.makefile("rb")
        for _ in range(3):
            sock.sendall(request)
            assert reader.readline().startswith(b"HTTP/1.1 200")
            headers = {}
            while (line := reader.readline()) != b"\r\n":
                name, _, value = line.decode().partition(":")
                headers[name.lower()] = value.strip()
            assert json.loads(reader.read(int(headers["content-length"])))["domains"]


def test_malformed_http_gets_a_problem_document(receiver: SyncReceiver) -> None:
    port = int(receiver.base_url.split(":")[2].split("/")[0])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        reply = sock.makefile("rb").read()
    assert reply.startswith(b"HTTP/1.1 400") and b"application/problem+json" in reply


# ---- request bodies -----------------------------------------------------------------------


def test_gzip_body_is_accepted(client: httpx.Client, receiver: SyncReceiver) -> None:
    body = gzip.compress(json.dumps({"upsert": [{"address": "a@contoso.com"}]}).encode())
    headers = {"Idempotency-Key": key(), "Content-Type": "application/json", "Content-Encoding": "gzip"}
    response = client.post("/datasets/addresses/changes", content=body, headers=headers)
    assert response.json() == {"applied": 1, "rejected": []}
    assert set(receiver.records("addresses")) == {"a@contoso.com"}


@pytest.mark.parametrize("mangle", [
    lambda gz: gz[: len(gz) // 2],
    lambda gz: gz[:10] + b"garbage-garbage" + gz[25:],
    lambda gz: gz + b"trailing",
    lambda gz: b"",
    lambda gz: b"not gzip at all",
])
def test_corrupt_or_truncated_gzip_is_400(client: httpx.Client, receiver: SyncReceiver, mangle: Any) -> None:
    body = mangle(gzip.compress(json.dumps({"upsert": [{"address": "a@contoso.com"}]}).encode()))
    headers = {"Idempotency-Key": key(), "Content-Type": "application/json", "Content-Encoding": "gzip"}
    assert_problem(client.post("/datasets/addresses/changes", content=body, headers=headers), 400)
    assert receiver.records("addresses") == {}


def test_unknown_content_encoding_is_400(client: httpx.Client) -> None:
    headers = {"Idempotency-Key": key(), "Content-Type": "application/json", "Content-Encoding": "br"}
    assert_problem(client.post("/datasets/addresses/changes", content=b"{}", headers=headers), 400)


def test_chunked_body_is_read(client: httpx.Client) -> None:
    parts = [b'{"upsert": [', b'{"address": "c@contoso.com"}', b"]}"]
    headers = {"Idempotency-Key": key(), "Content-Type": "application/json"}
    response = client.post("/datasets/addresses/changes", content=iter(parts), headers=headers)
    assert response.json() == {"applied": 1, "rejected": []}


@pytest.mark.parametrize("body", [b"{not json", b'{"upsert": [], "upsert": []}', b'{"upsert": [NaN]}',
                                  "\ufeff{}".encode(), b"\xff\xfe{}", b""])
def test_bad_json_is_400(client: httpx.Client, body: bytes) -> None:
    headers = {"Idempotency-Key": key(), "Content-Type": "application/json"}
    assert_problem(client.post("/datasets/users/changes", content=body, headers=headers), 400)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/json; charset=latin-1"])
def test_body_needs_json_content_type(client: httpx.Client, content_type: str | None) -> None:
    headers = {"Idempotency-Key": key()}
    if content_type:
        headers["Content-Type"] = content_type
    assert_problem(client.post("/datasets/users/changes", content=b"{}", headers=headers), 400)


@pytest.mark.parametrize("body", [
    [], "x", {"upsert": {}}, {"upsert": [], "extra": []}, {"delete": [1]}, {"upsert": ["a@contoso.com"]},
    {"upsert": None}, {"delete": "a"},
])
def test_wrong_shape_of_changes_is_400(client: httpx.Client, body: Any) -> None:
    assert_problem(change(client, "addresses", body), 400)


def test_either_change_list_may_be_left_out(client: httpx.Client) -> None:
    assert ok(client, "addresses", {}) == {"applied": 0, "rejected": []}
    assert ok(client, "addresses", {"delete": ["x@contoso.com"]}) == {"applied": 1, "rejected": []}


@pytest.mark.parametrize("idem", [None, "", "k" * 129, "é"])
def test_missing_empty_long_or_non_ascii_idempotency_key_is_400(client: httpx.Client, idem: str | None) -> None:
    headers = {} if idem is None else {"Idempotency-Key": idem.encode("utf-8")}
    assert_problem(client.post("/datasets/addresses/changes", json={}, headers=headers), 400)


def test_128_character_idempotency_key_is_accepted(client: httpx.Client) -> None:
    assert change(client, "addresses", {}, idem="k" * 128).status_code == 200


def test_more_than_1000_items_is_413_upserts_and_deletes_together(client: httpx.Client, receiver: SyncReceiver) -> None:
    upserts = [{"address": f"u{i}@contoso.com"} for i in range(600)]
    deletes = [f"d{i}@contoso.com" for i in range(401)]
    assert_problem(change(client, "addresses", {"upsert": upserts, "delete": deletes}), 413)
    assert receiver.records("addresses") == {}
    assert ok(client, "addresses", {"upsert": upserts, "delete": deletes[:400]})["applied"] == 1000


def test_body_over_10_mb_uncompressed_is_413(client: httpx.Client) -> None:
    padding = "a" * 10_000_000
    body = json.dumps({"upsert": [{"address": padding}]}).encode()
    headers = {"Idempotency-Key": key(), "Content-Type": "application/json"}
    assert_problem(client.post("/datasets/addresses/changes", content=body, headers=headers), 413)
    headers["Content-Encoding"] = "gzip"
    assert_problem(client.post("/datasets/addresses/changes", content=gzip.compress(body), headers=headers), 413)
    assert client.get("/domains").status_code == 200  # the connection is still usable


def test_body_limit_counts_uncompressed_bytes() -> None:
    with SyncReceiver(domains=["contoso.com"], max_body_bytes=2000) as r, http_client(r.base_url, auth=("sync", "secret")) as c:
        small = json.dumps({"upsert": [{"address": "a@contoso.com"}] * 10}).encode()
        big = json.dumps({"upsert": [{"address": "a@contoso.com"}] * 100}).encode()
        headers = {"Idempotency-Key": key(), "Content-Type": "application/json", "Content-Encoding": "gzip"}
        assert len(gzip.compress(big)) < 2000 < len(big)
        assert_problem(c.post("/datasets/addresses/changes", content=gzip.compress(big), headers=headers), 413)
        assert c.post("/datasets/addresses/changes", content=gzip.compress(small), headers=headers).status_code == 200
        plain = {"Idempotency-Key": key(), "Content-Type": "application/json"}
        huge = json.dumps({"upsert": [{"address": "a@contoso.com"}] * 3000}).encode()  # past the raw cap: drained
        assert_problem(c.post("/datasets/addresses/changes", content=huge, headers=plain), 413)
        assert_problem(c.post("/datasets/addresses/changes", content=iter([huge]), headers=plain), 413)
        assert c.get("/domains").status_code == 200


# ---- idempotency ---------------------------------------------------------------------------------


def test_same_key_same_body_replays_the_first_answer_and_applies_nothing(client: httpx.Client, receiver: SyncReceiver) -> None:
    body = {"upsert": [{"address": "a@contoso.com"}, {"address": "bad"}]}
    first = change(client, "addresses", body, idem="k1")
    ok(client, "addresses", {"delete": ["a@contoso.com"]})
    again = change(client, "addresses", body, idem="k1")
    assert (again.status_code, again.json()) == (first.status_code, first.json())
    assert again.headers["idempotent-replayed"] == "true"
    assert receiver.records("addresses") == {}
    assert receiver.request_log[-1].replayed


def test_replay_compares_uncompressed_body(client: httpx.Client) -> None:
    raw = json.dumps({"upsert": [{"address": "a@contoso.com"}]}).encode()
    headers = {"Idempotency-Key": "kz", "Content-Type": "application/json"}
    first = client.post("/datasets/addresses/changes", content=raw, headers=headers).json()
    again = client.post("/datasets/addresses/changes", content=gzip.compress(raw), headers=headers | {"Content-Encoding": "gzip"})
    assert again.json() == first


def test_same_key_different_body_is_409(client: httpx.Client, receiver: SyncReceiver) -> None:
    ok_answer = change(client, "addresses", {"upsert": [{"address": "a@contoso.com"}]}, idem="k1")
    assert ok_answer.status_code == 200
    assert_problem(change(client, "addresses", {"upsert": [{"address": "b@contoso.com"}]}, idem="k1"), 409)
    assert_problem(change(client, "users", {"upsert": [{"address": "a@contoso.com"}]}, idem="k1"), 409)
    assert set(receiver.records("addresses")) == {"a@contoso.com"}
    assert receiver.idempotency_conflicts() == 2
    assert receiver.keys_reused_with_different_body() == ["k1"]


def test_key_space_spans_endpoints(client: httpx.Client, receiver: SyncReceiver) -> None:
    assert change(client, "addresses", {}, idem="shared").status_code == 200
    rid = client.post("/datasets/addresses/replacements").json()["replacementId"]
    response = client.post(f"/datasets/addresses/replacements/{rid}/records", json={}, headers={"Idempotency-Key": "shared"})
    assert_problem(response, 409)


def test_failed_request_does_not_burn_its_key_but_reuse_is_reported(client: httpx.Client, receiver: SyncReceiver) -> None:
    too_many = {"delete": [f"x{i}" for i in range(1001)]}
    assert_problem(change(client, "addresses", too_many, idem="k2"), 413)
    assert change(client, "addresses", {"delete": ["x1"]}, idem="k2").status_code == 200
    assert receiver.idempotency_conflicts() == 0
    assert receiver.keys_reused_with_different_body() == ["k2"]


def test_retry_after_a_fault_is_not_a_reuse_but_a_changed_retry_is(client: httpx.Client, receiver: SyncReceiver) -> None:
    receiver.inject_fault("503", path_contains="changes", times=2)
    body = {"upsert": [{"address": "a@contoso.com"}]}
    assert change(client, "addresses", body, idem="f1").status_code == 503
    assert change(client, "addresses", body, idem="f1").status_code == 503
    assert change(client, "addresses", body, idem="f1").status_code == 200
    assert receiver.keys_reused_with_different_body() == []
    receiver.inject_fault("drop_before", path_contains="changes")
    with pytest.raises(httpx.RemoteProtocolError):
        change(client, "addresses", {"upsert": []}, idem="f2")
    assert change(client, "addresses", {"delete": []}, idem="f2").status_code == 200
    assert receiver.keys_reused_with_different_body() == ["f2"]


def test_concurrent_duplicates_apply_once(receiver: SyncReceiver) -> None:
    body = {"upsert": [user(f"u{i}", f"u{i}@contoso.com") for i in range(50)]}
    answers: list[dict[str, Any]] = []

    def send() -> None:
        with http_client(receiver.base_url, auth=("sync", "secret")) as c:
            answers.append(change(c, "users", body, idem="same").json())

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [{"applied": 50, "rejected": []}] * 8
    assert sum(not entry.replayed for entry in receiver.request_log) == 1


def test_a_batch_is_seen_all_or_nothing(client: httpx.Client, receiver: SyncReceiver) -> None:
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(len(receiver.records("addresses")))

    watcher = threading.Thread(target=watch)
    watcher.start()
    for n in range(4):
        ok(client, "addresses", {"upsert": [{"address": f"b{n}x{i}@contoso.com"} for i in range(1000)]})
    done.set()
    watcher.join()
    assert seen and all(count % 1000 == 0 for count in seen)


# ---- changes --------------------------------------------------------------------------------------


def test_deletes_apply_before_upserts_and_upserts_in_order(client: httpx.Client, receiver: SyncReceiver) -> None:
    ok(client, "groups", {"upsert": [group("g1"), group("g2")]})
    answer = ok(client, "groups", {"upsert": [group("g1", name="First"), group("g1", name="Second")], "delete": ["g1", "gone"]})
    assert answer == {"applied": 4, "rejected": []}
    assert receiver.records("groups")["g1"]["name"] == "Second"


def test_upsert_replaces_the_record_whole(client: httpx.Client, receiver: SyncReceiver) -> None:
    ok(client, "groups", {"upsert": [group("p"), group("c", "p")]})
    ok(client, "groups", {"upsert": [group("c", name="Renamed")]})
    assert receiver.records("groups")["c"] == {"id": "c", "name": "Renamed", "parentIds": []}


def test_addresses_are_case_insensitive_and_stored_lowercased(client: httpx.Client, receiver: SyncReceiver) -> None:
    ok(client, "addresses", {"upsert": [{"address": "Alice.Smith@Contoso.COM"}, {"address": "alice.smith@contoso.com"}]})
    assert receiver.records("addresses") == {"alice.smith@contoso.com": {"address": "alice.smith@contoso.com"}}
    ok(client, "addresses", {"delete": ["ALICE.SMITH@contoso.com"]})
    assert receiver.records("addresses") == {}


def test_idn_domain_in_a_label_form(client: httpx.Client) -> None:
    answer = ok(client, "addresses", {"upsert": [{"address": "max@xn--bcher-kva.de"}, {"address": "max@bücher.de"}]})
    assert codes(answer) == [("max@bücher.de", "invalid_address")]


# ---- record validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("dataset,record", [
    ("addresses", {"address": "a@contoso.com", "extra": 1}),
    ("addresses", {}),
    ("addresses", {"address": 5}),
    ("groups", {"id": "g", "name": "G"}),
    ("groups", {"id": "g", "name": "", "parentIds": []}),
    ("groups", {"id": "g", "name": "x" * 257, "parentIds": []}),
    ("groups", {"id": "g", "name": "G", "parentIds": "p"}),
    ("groups", {"id": "g", "name": "G", "parentIds": [1]}),
    ("groups", {"id": "", "name": "G", "parentIds": []}),
    ("groups", {"id": 7, "name": "G", "parentIds": []}),
    ("groups", {"id": "g", "name": None, "parentIds": []}),
    ("groups", {"id": "g", "name": "\ud800", "parentIds": []}),
    ("users", {"id": "u", "address": "u@contoso.com"}),
    ("users", {"id": "u", "address": "u@contoso.com", "groupIds": None}),
    ("users", {"id": "u", "address": "u@contoso.com", "groupIds": [], "name": "U"}),
])
def test_invalid_record(client: httpx.Client, receiver: SyncReceiver, dataset: str, record: dict[str, Any]) -> None:
    answer = ok(client, dataset, {"upsert": [record]})
    assert answer["applied"] == 0
    assert [r["code"] for r in answer["rejected"]] == ["invalid_record"]
    sent_key = record.get("address" if dataset == "addresses" else "id")
    assert answer["rejected"][0]["key"] == (sent_key if isinstance(sent_key, str) else None)
    assert receiver.records(dataset) == {}


def test_group_name_limits_count_characters(client: httpx.Client) -> None:
    answer = ok(client, "groups", {"upsert": [group("a", name="é" * 256), group("b", name="x")]})
    assert answer == {"applied": 2, "rejected": []}


def test_rejection_key_is_null_without_a_string_key(client: httpx.Client) -> None:
    answer = ok(client, "users", {"upsert": [{"id": 3, "address": "x@contoso.com", "groupIds": []}]})
    assert answer["rejected"][0]["key"] is None


INVALID_ADDRESSES = [
    "plain", "a@@contoso.com", "a@b@contoso.com", "@contoso.com", "a@", "ä@contoso.com", "a@bücher.de",
    ".a@contoso.com", "a.@contoso.com", "a..b@contoso.com", '"quoted"@contoso.com', "a b@contoso.com",
    "a(b)@contoso.com", "a,b@contoso.com", "a;b@contoso.com", "a\\b@contoso.com", "a[b]@contoso.com",
    "l" * 65 + "@contoso.com", "a@contoso", "a@contoso.com.", "a@.contoso.com", "a@contoso..com",
    "a@-contoso.com", "a@contoso-.com", "a@con_toso.com", "a@" + "l" * 64 + ".com", "a@contoso.123",
    "a@xn--zz.com", "a@xn--abc.com", "a@xn--.com", "a@XN--ZZ.com", "a@[127.0.0.1]", "a@contoso.com\n",
    " a@contoso.com", "a@contoso.com ", "a@con toso.com",
    "a@" + ".".join(["l" * 63] * 4),  # 255-character domain
    "a" * 60 + "@" + ".".join(["d" * 60] * 3) + "." + "e" * 11,  # 255 octets in all
]


@pytest.mark.parametrize("address", INVALID_ADDRESSES)
def test_address_syntax_rejections(address: str) -> None:
    assert address_problem(address) is not None


VALID_ADDRESSES = [
    "a@contoso.com", "A.B-c_d+e@contoso.com", "!#$%&'*+-/=?^_`{|}~@contoso.com", "l" * 64 + "@contoso.com",
    "a@sub.contoso.com", "a@xn--bcher-kva.de", "a@XN--BCHER-KVA.DE", "a@123.contoso.com", "a@c.xn--p1ai",
    "a@a-b.co", "a@" + "l" * 63 + ".com", "a" * 64 + "@" + ".".join(["d" * 60] * 3) + "." + "e" * 3,
]


@pytest.mark.parametrize("address", VALID_ADDRESSES)
def test_address_syntax_accepted(address: str) -> None:
    assert len(address) <= 254
    assert address_problem(address) is None


def test_invalid_address_over_http(client: httpx.Client) -> None:
    answer = ok(client, "users", {"upsert": [user("u1", "a..b@contoso.com"), user("u2", "ok@contoso.com")]})
    assert codes(answer) == [("u1", "invalid_address")]
    assert answer["applied"] == 1


def test_domain_must_be_provisioned_exactly(client: httpx.Client) -> None:
    answer = ok(client, "addresses", {"upsert": [
        {"address": "a@northwind.com"}, {"address": "a@sub.contoso.com"}, {"address": "a@FABRIKAM.com"},
        {"address": "a@xn--bcher-kva.de"},
    ]})
    assert codes(answer) == [("a@northwind.com", "domain_not_provisioned"), ("a@sub.contoso.com", "domain_not_provisioned")]


def test_address_in_other_account(client: httpx.Client) -> None:
    answer = ok(client, "addresses", {"upsert": [{"address": "Taken@contoso.com"}]})
    assert codes(answer) == [("Taken@contoso.com", "address_in_other_account")]
    answer = ok(client, "users", {"upsert": [user("u1", "taken@contoso.com")]})
    assert codes(answer) == [("u1", "address_in_other_account")]


def test_duplicate_address_against_stored_users(client: httpx.Client, receiver: SyncReceiver) -> None:
    ok(client, "users", {"upsert": [user("u1", "a@contoso.com")]})
    answer = ok(client, "users", {"upsert": [user("u2", "A@contoso.com"), user("u1", "a@contoso.com")]})
    assert codes(answer) == [("u2", "duplicate_address")]
    assert set(receiver.records("users")) == {"u1"}


def test_duplicate_address_in_request_order(client: httpx.Client, receiver: SyncReceiver) -> None:
    answer = ok(client, "users", {"upsert": [user("u1", "a@contoso.com"), user("u2", "a@contoso.com")]})
    assert codes(answer) == [("u2", "duplicate_address")]
    # u1 moves away, then u2 takes the freed address: fine, in this order.
    answer = ok(client, "users", {"upsert": [user("u1", "b@contoso.com"), user("u2", "a@contoso.com")]})
    assert answer == {"applied": 2, "rejected": []}
    # the other order: u3 takes b while u1 still holds it.
    answer = ok(client, "users", {"upsert": [user("u3", "b@contoso.com"), user("u1", "c@contoso.com")]})
    assert codes(answer) == [("u3", "duplicate_address")]
    assert {r["address"] for r in receiver.records("users").values()} == {"a@contoso.com", "c@contoso.com"}


def test_deleted_user_frees_its_address(client: httpx.Client) -> None:
    ok(client, "users", {"upsert": [user("u1", "a@contoso.com")]})
    assert ok(client, "users", {"upsert": [user("u2", "a@contoso.com")], "delete": ["u1"]}) == {"applied": 2, "rejected": []}


# ---- group references ---------------------------------------------------------------------------------


def test_group_cycle_in_one_request(client: httpx.Client, receiver: SyncReceiver) -> None:
    answer = ok(client, "groups", {"upsert": [group("a", "c"), group("b", "a"), group("c", "b"), group("self", "self")]})
    assert answer == {"applied": 4, "rejected": []}
    assert receiver.records("groups")["a"]["parentIds"] == ["c"]


def test_unknown_parent_rejection_reaches_a_fixpoint(client: httpx.Client, receiver: SyncReceiver) -> None:
    answer = ok(client, "groups", {"upsert": [group("a", "b"), group("b", "c"), group("c", "missing"), group("d")]})
    assert codes(answer) == [("a", "unknown_group"), ("b", "unknown_group"), ("c", "unknown_group")]
    assert set(receiver.records("groups")) == {"d"}


def test_rejected_upsert_of_a_stored_group_keeps_it_existing(client: httpx.Client, receiver: SyncReceiver) -> None:
    ok(client, "groups", {"upsert": [group("a")]})
    answer = ok(client, "groups", {"upsert": [group("a", "missing"), group("b", "a")]})
    assert codes(answer) == [("a", "unknown_group")]
    assert receiver.records("groups") == {"a": group("a"), "b": group("b", "a")}


def test_reference_to_a_group_deleted_in_the_same_request(client: httpx.Client) -> None:
    ok(client, "groups", {"upsert": [group("a")]})
    answer = ok(client, "groups", {"upsert": [group("b", "a")], "delete": ["a"]})
    assert codes(answer) == [("b", "unknown_group")]


def test_users_group_ids_must_name_stored_groups(client: httpx.Client) -> None:
    ok(client, "groups", {"upsert": [group("g1")]})
    answer = ok(client, "users", {"upsert": [user("u1", "a@contoso.com", "g1"), user("u2", "b@contoso.com", "g1", "g9")]})
    assert codes(answer) == [("u2", "unknown_group")]


def test_id_lists_are_order_free_sets(client: httpx.Client, receiver: SyncReceiver) -> None:
    ok(client, "groups", {"upsert": [group("g2"), group("g1")]})
    ok(client, "users", {"upsert": [user("u1", "a@contoso.com", "g2", "g1", "g2")]})
    assert receiver.records("users")["u1"]["groupIds"] == ["g1", "g2"]


def test_deleting_a_group_strips_its_id_everywhere(client: httpx.Client, receiver: SyncReceiver) -> None:
    ok(client, "groups", {"upsert": [group("p"), group("q"), group("c", "p", "q")]})
    ok(client, "users", {"upsert": [user("u1", "a@contoso.com", "p", "c")]})
    assert ok(client, "groups", {"delete": ["p"]}) == {"applied": 1, "rejected": []}
    assert receiver.records("groups")["c"]["parentIds"] == ["q"]
    assert receiver.records("users")["u1"]["groupIds"] == ["c"]


# ---- paging --------------------------------------------------------------------------------------------------


def all_pages(client: httpx.Client, dataset: str, size: int) -> tuple[list[dict[str, Any]], int]:
    records, pages, token = [], 0, None
    while True:
        params: dict[str, Any] = {"pageSize": size} | ({"pageToken": token} if token else {})
        answer = client.get(f"/datasets/{dataset}/records", params=params).json()
        records += answer["records"]
        pages += 1
        token = answer["nextPageToken"]
        if token is None:
            return records, pages


def test_paging_in_stable_key_order(client: httpx.Client, receiver: SyncReceiver) -> None:
    receiver.load("addresses", [{"address": f"U{i:03d}@contoso.com"} for i in range(25)])
    records, pages = all_pages(client, "addresses", 10)
    assert [r["address"] for r in records] == [f"u{i:03d}@contoso.com" for i in range(25)]
    assert pages == 3
    assert all_pages(client, "addresses", 5)[1] == 5  # an exactly full last page still ends with null


def test_page_token_survives_writes(client: httpx.Client, receiver: SyncReceiver) -> None:
    receiver.load("addresses", [{"address": f"u{i}@contoso.com"} for i in range(4)])
    first = client.get("/datasets/addresses/records", params={"pageSize": 2}).json()
    ok(client, "addresses", {"delete": ["u1@contoso.com"]})
    rest = client.get("/datasets/addresses/records", params={"pageSize": 2, "pageToken": first["nextPageToken"]}).json()
    assert [r["address"] for r in rest["records"]] == ["u2@contoso.com", "u3@contoso.com"]


def test_default_page_size_is_1000(client: httpx.Client, receiver: SyncReceiver) -> None:
    receiver.load("addresses", [{"address": f"u{i:04d}@contoso.com"} for i in range(1001)])
    answer = client.get("/datasets/addresses/records").json()
    assert len(answer["records"]) == 1000 and answer["nextPageToken"]
    assert client.get("/datasets/groups/records").json() == {"records": [], "nextPageToken": None}


@pytest.mark.parametrize("query", ["pageSize=0", "pageSize=5001", "pageSize=abc", "pageSize=-1", "pageSize=",
                                   "pageSize=10&pageSize=10", "pageToken=", "pageToken=zzz", "size=10"])
def test_bad_paging_parameters_are_400(client: httpx.Client, query: str) -> None:
    assert_problem(client.get(f"/datasets/users/records?{query}"), 400)


def test_page_size_bounds_and_foreign_token(client: httpx.Client, receiver: SyncReceiver) -> None:
    receiver.load("groups", [group(f"g{i}") for i in range(3)])
    assert client.get("/datasets/groups/records?pageSize=5000").status_code == 200
    token = client.get("/datasets/groups/records?pageSize=1").json()["nextPageToken"]
    assert_problem(client.get("/datasets/users/records", params={"pageToken": token}), 400)


# ---- staged replace ---------------------------------------------------------------------------------------------


def new_replacement(client: httpx.Client, dataset: str) -> str:
    response = client.post(f"/datasets/{dataset}/replacements")
    assert response.status_code == 201, response.text
    return response.json()["replacementId"]


def send_records(client: httpx.Client, dataset: str, rid: str, records: list[Any], idem: str | None = None) -> httpx.Response:
    return client.post(f"/datasets/{dataset}/replacements/{rid}/records", json={"records": records},
                       headers={"Idempotency-Key": idem or key()})


def commit(client: httpx.Client, dataset: str, rid: str) -> httpx.Response:
    return client.post(f"/datasets/{dataset}/replacements/{rid}/commit")


def test_staged_replace_is_atomic(client: httpx.Client, receiver: SyncReceiver) -> None:
    ok(client, "addresses", {"upsert": [{"address": "old@contoso.com"}, {"address": "keep@contoso.com"}]})
    rid = new_replacement(client, "addresses")
    staged = [{"address": "Keep@contoso.com"}, {"address": "new@contoso.com"}, {"address": "x@nowhere.com"}]
    answer = send_records(client, "addresses", rid, staged).json()
    assert answer["received"] == 2 and codes(answer) == [("x@nowhere.com", "domain_not_provisioned")]
    assert set(receiver.records("addresses")) == {"old@contoso.com", "keep@contoso.com"}
    live = client.get("/datasets/addresses/records").json()["records"]
    assert live == [{"address": "keep@contoso.com"}, {"address": "old@contoso.com"}]
    committed = commit(client, "addresses", rid)
    assert committed.json() == {"count": 2, "rejected": []}
    assert set(receiver.records("addresses")) == {"keep@contoso.com", "new@contoso.com"}
    assert commit(client, "addresses", rid).json() == committed.json()


def test_record_received_again_replaces_the_earlier_one(client: httpx.Client, receiver: SyncReceiver) -> None:
    rid = new_replacement(client, "users")
    send_records(client, "users", rid, [user("u1", "a@contoso.com")])
    moved = send_records(client, "users", rid, [user("u1", "b@contoso.com"), user("u2", "a@contoso.com")])
    assert moved.json() == {"received": 2, "rejected": []}
    answer = send_records(client, "users", rid, [user("u3", "b@contoso.com")]).json()
    assert [r["code"] for r in answer["rejected"]] == ["duplicate_address"]
    assert commit(client, "users", rid).json() == {"count": 2, "rejected": []}
    assert receiver.records("users")["u1"]["address"] == "b@contoso.com"


def test_users_replacement_checks_live_groups_at_receive_time(client: httpx.Client) -> None:
    ok(client, "groups", {"upsert": [group("g1")]})
    rid = new_replacement(client, "users")
    answer = send_records(client, "users", rid, [user("u1", "a@contoso.com", "g1"), user("u2", "b@contoso.com", "g2")]).json()
    assert codes(answer) == [("u2", "unknown_group")]
    ok(client, "groups", {"delete": ["g1"]})
    committed = commit(client, "users", rid).json()
    assert committed["count"] == 1 and codes(committed) == [("u1", "unknown_group")]


def test_groups_replacement_checks_parents_at_commit(client: httpx.Client, receiver: SyncReceiver) -> None:
    ok(client, "groups", {"upsert": [group("old"), group("g1")]})
    ok(client, "users", {"upsert": [user("u1", "a@contoso.com", "old", "g1")]})
    rid = new_replacement(client, "groups")
    assert send_records(client, "groups", rid, [group("a", "b"), group("c", "old", "nowhere")]).json()["received"] == 2
    assert send_records(client, "groups", rid, [group("b", "a"), group("g1")]).json()["received"] == 2
    answer = commit(client, "groups", rid).json()
    assert answer["count"] == 4
    assert sorted(codes(answer)) == [("c", "unknown_group"), ("c", "unknown_group")]
    groups = receiver.records("groups")
    assert set(groups) == {"a", "b", "c", "g1"} and groups["c"]["parentIds"] == [] and groups["a"]["parentIds"] == ["b"]
    assert receiver.records("users")["u1"]["groupIds"] == ["g1"]


def test_abandoned_replacement(client: httpx.Client, receiver: SyncReceiver) -> None:
    rid = new_replacement(client, "addresses")
    send_records(client, "addresses", rid, [{"address": "a@contoso.com"}])
    assert client.delete(f"/datasets/addresses/replacements/{rid}").status_code == 204
    assert client.delete(f"/datasets/addresses/replacements/{rid}").status_code == 204
    assert_problem(send_records(client, "addresses", rid, [{"address": "b@contoso.com"}]), 404)
    assert_problem(commit(client, "addresses", rid), 404)
    assert receiver.records("addresses") == {}


def test_committed_replacement_takes_no_more_records(client: httpx.Client) -> None:
    rid = new_replacement(client, "addresses")
    sent = send_records(client, "addresses", rid, [{"address": "a@contoso.com"}], idem="r1")
    commit(client, "addresses", rid)
    assert_problem(send_records(client, "addresses", rid, [{"address": "b@contoso.com"}]), 404)
    assert send_records(client, "addresses", rid, [{"address": "a@contoso.com"}], idem="r1").json() == sent.json()
    assert_problem(client.delete(f"/datasets/addresses/replacements/{rid}"), 404)


def test_create_and_commit_honour_an_optional_idempotency_key(client: httpx.Client) -> None:
    first = client.post("/datasets/groups/replacements", headers={"Idempotency-Key": "create-1"})
    again = client.post("/datasets/groups/replacements", headers={"Idempotency-Key": "create-1"})
    assert again.status_code == 201 and again.json() == first.json()
    rid = first.json()["replacementId"]
    assert client.post(f"/datasets/groups/replacements/{rid}/commit", headers={"Idempotency-Key": "commit-1"}).status_code == 200
    assert_problem(client.post(f"/datasets/users/replacements/{rid}/commit", headers={"Idempotency-Key": "commit-1"}), 409)


def test_replacement_expires(client: httpx.Client, clock: FakeClock) -> None:
    rid = new_replacement(client, "addresses")
    clock.now += 86400.0 - 1
    assert send_records(client, "addresses", rid, []).status_code == 200
    clock.now += 2
    assert_problem(send_records(client, "addresses", rid, []), 404)
    assert_problem(commit(client, "addresses", rid), 404)


def test_replacement_requests_are_checked(client: httpx.Client) -> None:
    rid = new_replacement(client, "addresses")
    assert_problem(send_records(client, "users", rid, []), 404)
    assert_problem(send_records(client, "addresses", "nope", []), 404)
    assert_problem(client.post(f"/datasets/addresses/replacements/{rid}/records", json={"records": []}), 400)
    assert_problem(client.post(f"/datasets/addresses/replacements/{rid}/records", json={"records": [], "x": 1},
                               headers={"Idempotency-Key": key()}), 400)
    assert_problem(send_records(client, "addresses", rid, ["a@contoso.com"]), 400)
    assert_problem(send_records(client, "addresses", rid, [{"address": f"a{i}@contoso.com"} for i in range(1001)]), 413)
    assert_problem(client.post("/datasets/addresses/replacements", json={"x": 1}), 400)
    assert client.post("/datasets/addresses/replacements", json={}).status_code == 201


# ---- faults ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["429", "503"])
def test_throttling_faults_carry_retry_after(client: httpx.Client, receiver: SyncReceiver, kind: str) -> None:
    receiver.inject_fault(kind, path_contains="/changes", retry_after=7)
    assert client.get("/domains").status_code == 200
    response = change(client, "addresses", {"upsert": [{"address": "a@contoso.com"}]}, idem="t")
    assert_problem(response, int(kind))
    assert response.headers["retry-after"] == "7"
    assert receiver.records("addresses") == {}
    assert change(client, "addresses", {"upsert": [{"address": "a@contoso.com"}]}, idem="t").status_code == 200


def test_500_fault_and_times(client: httpx.Client, receiver: SyncReceiver) -> None:
    receiver.inject_fault("500", times=2)
    assert_problem(client.get("/domains"), 500)
    assert_problem(client.get("/domains"), 500)
    assert client.get("/domains").status_code == 200


def test_drop_before_applies_nothing(client: httpx.Client, receiver: SyncReceiver) -> None:
    receiver.inject_fault("drop_before", path_contains="addresses/changes")
    with pytest.raises(httpx.RemoteProtocolError):
        change(client, "addresses", {"upsert": [{"address": "a@contoso.com"}]}, idem="d")
    assert receiver.records("addresses") == {}
    assert receiver.request_log[-1].status is None
    assert receiver.request_log[-1].body == {"upsert": [{"address": "a@contoso.com"}]}


def test_drop_after_applies_once_and_replays(client: httpx.Client, receiver: SyncReceiver) -> None:
    receiver.inject_fault("drop_after", path_contains="addresses/changes")
    body = {"upsert": [{"address": "a@contoso.com"}]}
    with pytest.raises(httpx.RemoteProtocolError):
        change(client, "addresses", body, idem="d")
    assert set(receiver.records("addresses")) == {"a@contoso.com"}
    lost = receiver.request_log[-1]
    assert (lost.fault, lost.status, lost.response) == ("drop_after", None, {"applied": 1, "rejected": []})
    ok(client, "addresses", {"delete": ["a@contoso.com"]})
    retry = change(client, "addresses", body, idem="d")
    assert retry.json() == {"applied": 1, "rejected": []} and retry.headers["idempotent-replayed"] == "true"
    assert receiver.records("addresses") == {}


def test_401_fault_refuses_good_credentials(client: httpx.Client, receiver: SyncReceiver) -> None:
    receiver.inject_fault("401")
    assert_problem(client.get("/domains"), 401)
    assert client.get("/domains").status_code == 200


def test_html_and_wrong_shape_faults(client: httpx.Client, receiver: SyncReceiver) -> None:
    receiver.inject_fault("html", path_contains="changes")
    receiver.inject_fault("wrong_shape", path_contains="changes")
    html = change(client, "addresses", {"upsert": [{"address": "a@contoso.com"}]})
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    wrong = change(client, "addresses", {"upsert": [{"address": "a@contoso.com"}]})
    assert wrong.status_code == 200 and "applied" not in wrong.json()
    assert receiver.records("addresses") == {}


def test_unknown_fault_kind_is_refused(receiver: SyncReceiver) -> None:
    with pytest.raises(ValueError):
        receiver.inject_fault("418")


# ---- the Python API -------------------------------------------------------------------------------------------


def test_request_log_records_each_request(client: httpx.Client, receiver: SyncReceiver) -> None:
    change(client, "addresses", {"upsert": [{"address": "a@contoso.com"}]}, idem="log1")
    client.get("/datasets/addresses/records?pageSize=5")
    post, get = receiver.request_log[-2:]
    assert (post.method, post.path, post.idempotency_key, post.status) == ("POST", "/v1/datasets/addresses/changes", "log1", 200)
    assert post.body == {"upsert": [{"address": "a@contoso.com"}]}
    assert post.response == {"applied": 1, "rejected": []}
    assert (get.method, get.query, get.body, get.response["nextPageToken"]) == ("GET", "pageSize=5", None, None)


def test_records_and_load_are_copies(receiver: SyncReceiver) -> None:
    receiver.load("groups", [group("g1")])
    receiver.records("groups")["g1"]["name"] = "mutated"
    assert receiver.records("groups")["g1"]["name"] == "G1"
    with pytest.raises(ValueError):
        receiver.records("nope")


# ---- the command line -----------------------------------------------------------------------------------------


def test_command_line_receiver_with_admin_endpoints() -> None:
    command = [sys.executable, "-m", "devstack.sync_receiver", "--port", "0", "--domains", "contoso.com,fabrikam.com",
               "--credential", "u:p"]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:") and line.endswith("/v1")
        base = line.split()[1]
        admin = base.removesuffix("/v1") + "/_receiver"
        with http_client("", auth=("u", "p")) as c:
            assert c.get(base + "/domains").json() == {"domains": ["contoso.com", "fabrikam.com"]}
            fault = {"kind": "503", "path_contains": "changes", "retry_after": 2}
            assert c.post(admin + "/faults", json=fault).status_code == 204
            headers = {"Idempotency-Key": "cli"}
            body = {"upsert": [{"address": "a@fabrikam.com"}]}
            assert c.post(base + "/datasets/addresses/changes", json=body, headers=headers).status_code == 503
            assert c.post(base + "/datasets/addresses/changes", json=body, headers=headers).status_code == 200
            assert c.get(admin + "/datasets/addresses").json() == {"records": [{"address": "a@fabrikam.com"}]}
            log = c.get(admin + "/log").json()
            assert [r["status"] for r in log["requests"]] == [200, 503, 200]
            assert log["idempotencyConflicts"] == 0
            assert c.put(admin + "/datasets/groups", json={"records": [group("g")]}).status_code == 204
            assert c.get(base + "/datasets/groups/records").json()["records"] == [group("g")]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()
