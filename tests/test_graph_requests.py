"""What the Graph reader puts on the wire, read by a Graph server on loopback: the first request of
a round spells ``$select``/``$top`` as Graph documents them (not ``%24select``, as msgraph-sdk's
URL templates write it), every page asks for
``Prefer: odata.maxpagesize=999`` and gzip, and a ``@odata.nextLink`` is followed exactly as Graph
wrote it (Graph: "use the entire URL in the @odata.nextLink property as is";
https://learn.microsoft.com/graph/paging)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from tests.test_graph_gzip import Answer, Server, read_users, serve  # noqa: F401 - serve: the fixture

# A link whose parameter name and value hold percent-escapes a decoder would rewrite.
NEXT = "/v1.0/users/delta?%24skiptoken=a%2Eb%24c%7E&x%2Dy=1"


def two_pages(holder: dict[str, Server]) -> Any:
    def answer(path: str) -> Answer:
        origin = holder["server"].origin
        json_type = {"Content-Type": "application/json"}
        if path.startswith("/v1.0/users/delta") and "select=" in path:  # the first page
            body = {"value": [{"id": "u1"}], "@odata.nextLink": f"{origin}{NEXT}"}
        elif path.startswith("/v1.0/users/"):  # any other: the last page (the test checks its path)
            body = {"value": [{"id": "u2"}], "@odata.deltaLink": f"{origin}/v1.0/users/delta?$deltatoken=d"}
        else:
            collection = path.split("/")[2]
            body = {"value": [], "@odata.deltaLink": f"{origin}/v1.0/{collection}/delta?$deltatoken=d"}
        return 200, json_type, json.dumps(body).encode()

    return answer


def test_the_wire_requests_of_a_round(serve) -> None:  # noqa: F811 - the fixture
    holder: dict[str, Server] = {}
    server = serve(two_pages(holder))
    holder["server"] = server
    assert [u["id"] for u in read_users(server.origin)] == ["u1", "u2"]

    paths = server.paths
    users = [p for p in paths if p.startswith("/v1.0/users/")]
    # The first request: $select spelled as Graph documents it, the properties the rules need.
    first = users[0]
    assert "?$select=" in first and "%24" not in first
    assert unquote(first.split("$select=")[1].split("&")[0]).split(",") == ["id", "mail", "proxyAddresses", "userType"]
    groups = next(p for p in paths if p.startswith("/v1.0/groups/"))
    assert "members" in unquote(groups.split("$select=")[1]).split(",")
    # The nextLink: byte for byte as Graph wrote it.
    assert users[1] == NEXT
    assert len(users) == 2 and len(paths) == 4
    for headers in server.asked:
        assert headers["Prefer"] == "odata.maxpagesize=999"
        assert headers["Accept-Encoding"] == "gzip"
