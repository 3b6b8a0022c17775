"""Every input gets a 4xx, never a 500 (issue 15, part 4), through a real server's HTTP API:
integers past 64 bits, listings of -1 rows, absurd parallelism, times in year 1, flags that are
not booleans, and the shape of every refusal. Each request here was a 500 or was accepted
before the bounds existed; each must now be a 4xx that names the field and changes nothing."""

from __future__ import annotations

from typing import Any

import httpx

BIG = 1 << 64  # one past what SQLite's INTEGER holds (OverflowError, a 500, before)


def call(
    fleet: Any, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any
) -> httpx.Response:
    """One request with the admin token, on its own connection (a 500 used to close it)."""
    headers = {"Authorization": f"Bearer {fleet.server.token}", **(headers or {})}
    return httpx.request(method, fleet.server.url + path, headers=headers, timeout=60, **kw)


def refused(response: httpx.Response, status: int = 422) -> str:
    """The refusal's message, after checking its status and its one shape."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error", "message"}, body
    return body["message"]


def world(fleet: Any) -> dict[str, Any]:
    """What a refused request could have changed."""
    return {
        "clones": fleet.rows("SELECT name, kind, version_id FROM clones ORDER BY name"),
        "operations": fleet.rows("SELECT id, status FROM operations ORDER BY id"),
        "versions": fleet.rows("SELECT template_id, number FROM versions ORDER BY id"),
        "pools": fleet.rows("SELECT name FROM pools ORDER BY name"),
        "sites": fleet.rows("SELECT name FROM sites ORDER BY name"),
        "assignments": fleet.rows("SELECT * FROM site_templates"),
    }


# --- integers ---------------------------------------------------------------------------

PAST_64_BITS = [
    ("GET", f"/operations/{BIG}", None, "path.op_id"),
    ("POST", f"/operations/{BIG}/pause", None, "path.op_id"),
    ("POST", f"/operations/{BIG}/resume", None, "path.op_id"),
    ("POST", f"/operations/{BIG}/cancel", None, "path.op_id"),
    ("GET", f"/operations?limit={BIG}", None, "query.limit"),
    ("GET", f"/audit?limit={BIG}", None, "query.limit"),
    ("DELETE", f"/templates/base/versions/{BIG}", None, "path.number"),
    ("GET", f"/templates/base/bundle?since={BIG}", None, "query.since"),
    ("POST", "/clones/recreate", {"template": "base", "rollout": {"max_parallel": BIG}},
     "rollout.max_parallel"),
    ("POST", "/clones/recreate", {"template": "base", "rollout": {"per_host": BIG}},
     "rollout.per_host"),
    ("POST", "/clones/recreate", {"template": "base", "rollout": {"canary": BIG}},
     "rollout.canary"),
    ("POST", "/hosts/sim-host-1/prefetch", {"template": "base", "version": BIG}, "version"),
    ("POST", "/templates/base/publish", {"version": BIG}, "version"),
    ("POST", "/site/schedule", {"limit": BIG}, "limit"),
    ("POST", "/site/sync", {"limit": 1e300}, "limit"),
    ("POST", "/pools", {"name": "p", "template": "base", "max": BIG}, "max"),
    ("POST", "/pools", {"name": "p", "template": "base", "max": 2, "buffer": BIG}, "buffer"),
    ("POST", "/pools", {"name": "p", "template": "base", "max": 2, "window_minutes": BIG,
                        "window_cron": "0 22 * * 6"}, "window_minutes"),
]  # fmt: skip


def test_an_integer_past_its_bound_is_a_422_naming_the_field(fleet, template) -> None:
    """Path, query and body: 2**64 was SQLite's OverflowError (a 500) or was stored."""
    fleet.create(count=2)
    before = world(fleet)
    for method, path, body, field in PAST_64_BITS:
        message = refused(call(fleet, method, path, json=body))
        assert message.startswith(f"{field}: Input should be less than or equal to "), message
    assert world(fleet) == before


def test_a_listing_takes_1_to_1000_rows(fleet, template) -> None:
    fleet.create(count=2)
    fleet.create(count=1)  # two operations, and audit rows for each
    for listing in ("/operations", "/audit"):
        for limit in (-1, 0, 1001):  # -1 returned every row
            message = refused(call(fleet, "GET", f"{listing}?limit={limit}"))
            assert message.startswith("query.limit: Input should be "), message
        assert len(fleet.client.get(listing, params={"limit": 1})) == 1
        assert len(fleet.client.get(listing, params={"limit": 1000})) >= 2


# --- rollout policies and times ---------------------------------------------------------

OUT_OF_RANGE = "is out of range: write a time from 2000-01-01 to 9998-12-31 (UTC)"
REFUSED_ROLLOUTS = [
    ({"max_parallel": 10**23}, "rollout.max_parallel: Input should be less than or equal to 10000"),
    ({"max_parallel": 10_001}, "rollout.max_parallel: Input should be less than or equal to 10000"),
    ({"per_host": 10_001}, "rollout.per_host: Input should be less than or equal to 10000"),
    ({"canary": 10_001}, "rollout.canary: Input should be less than or equal to 10000"),
    ({"max_failures": "1" + "0" * 30}, "--max-failures '1000000000000000000000000000000' is not"
     " valid: a count like 3 or a share like 10%"),
    ({"deadline": "0001-01-01T00:00"}, f"--deadline '0001-01-01T00:00' {OUT_OF_RANGE}"),
    ({"deadline": "1999-12-31T23:59"}, f"--deadline '1999-12-31T23:59' {OUT_OF_RANGE}"),
    # an offset carried these past what a datetime holds: OverflowError, a 500
    ({"deadline": "0001-01-01T00:00+01:00"}, f"--deadline '0001-01-01T00:00+01:00' {OUT_OF_RANGE}"),
    ({"at": "9999-12-31T23:00-05:00"}, f"--at '9999-12-31T23:00-05:00' {OUT_OF_RANGE}"),
    ({"at": "0001-01-01"}, f"--at '0001-01-01' {OUT_OF_RANGE}"),
]  # fmt: skip


def test_a_rollout_or_site_assignment_out_of_range_is_refused_and_changes_nothing(
    fleet, template
) -> None:
    fleet.create(count=2)
    fleet.client.post("/sites", {"name": "branch"})
    before = world(fleet)
    for rollout, expected in REFUSED_ROLLOUTS:
        for path, body in [
            ("/clones/recreate", {"template": "base"}),
            ("/clones/rebase", {"template": "base"}),
            ("/clones", {"template": "base", "count": 1}),
        ]:
            message = refused(call(fleet, "POST", path, json={**body, "rollout": rollout}))
            assert message == expected, (path, rollout)
    assign = {"template": "base", "publish_at": "0001-01-01"}
    r = call(fleet, "POST", "/sites/branch/templates", json=assign)
    assert refused(r) == f"--publish-at '0001-01-01' {OUT_OF_RANGE}"
    for versions in ("²", "9" * 5000):  # str.isdigit() took both, int() did not: 500s
        body = {"template": "base", "versions": versions}
        r = call(fleet, "POST", "/sites/branch/templates", json=body)
        assert refused(r).startswith("--versions "), versions
    assert world(fleet) == before
    # the largest values in range are taken
    rollout = {"max_parallel": 10_000, "per_host": 10_000, "deadline": "9998-12-31T23:59"}
    op = fleet.client.post("/clones/recreate", {"template": "base", "rollout": rollout})
    assert (op["policy"]["max_parallel"], op["policy"]["per_host"]) == (10_000, 10_000)
    assert op["policy"]["deadline"] == "9998-12-31T23:59:00"


# --- flags ------------------------------------------------------------------------------

NOT_BOOLEANS = [
    ("/clones", {"template": "base", "count": 1, "full": "yes"}, "full"),  # made a full clone
    ("/clones", {"template": "base", "count": 1, "wait": 1}, "wait"),
    ("/clones/recreate", {"template": "base", "include_full": "true"}, "include_full"),
    ("/clones/recreate", {"template": "base", "discard_data": "on"}, "discard_data"),
    ("/clones/recreate", {"template": "base", "rollout": {"canary_auto": "y"}},
     "rollout.canary_auto"),
    ("/clones/retry", {"all": 1}, "all"),
    ("/templates/base/maintenance/exit", {"shutdown": "t"}, "shutdown"),
    ("/hosts/prune", {"dry_run": "no"}, "dry_run"),
    ("/sites", {"name": "branch", "local_patches": "yes"}, "local_patches"),
]  # fmt: skip


def test_a_flag_is_a_json_boolean_and_a_query_flag_true_or_false(fleet, template) -> None:
    """pydantic's lax mode read "yes", "on", 1, "t"… as true: ``"full": "yes"`` made a full
    clone."""
    fleet.client.post("/pools", {"name": "desks", "template": "base", "max": 2})
    before = world(fleet)
    for path, body, field in NOT_BOOLEANS:
        message = refused(call(fleet, "POST", path, json=body))
        assert message == f"{field}: Input should be a valid boolean", message
    for method, path in [
        ("GET", "/templates/base/bundle?policy_only=yes"),
        ("DELETE", "/pools/desks?keep_clones=1"),
    ]:
        message = refused(call(fleet, method, path))
        assert message.endswith("Input should be true or false"), message
    assert world(fleet) == before
    r = call(fleet, "GET", "/templates/base/bundle?policy_only=true")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"


# --- the shape of a refusal -------------------------------------------------------------


def test_every_refusal_has_one_shape_even_from_the_framework(fleet, template) -> None:
    """Not JSON, no such route, a method the route does not take: these were FastAPI's
    ``{"detail": …}``, which the OpenAPI description did not promise."""
    json = {"Content-Type": "application/json"}
    r = call(fleet, "POST", "/clones", content=b"A\x80 not UTF-8", headers=json)
    assert refused(r, 400) == "There was an error parsing the body"
    assert r.json()["error"] == "BadRequest"
    r = call(fleet, "POST", "/clones", content=b"{not json", headers=json)
    message = refused(r)
    assert message.startswith("the request body is not valid JSON: Expecting property"), message
    r = call(fleet, "GET", "/no/such/route")
    assert refused(r, 404) == "Not Found"
    r = call(fleet, "PATCH", "/templates")
    assert refused(r, 405) == "Method Not Allowed" and r.json()["error"] == "MethodNotAllowed"
    assert set(r.headers["allow"].replace(" ", "").split(",")) == {"GET"}


def test_the_openapi_description_promises_what_is_sent(fleet, template) -> None:
    """Every operation documents its refusals as ``ErrorPublic``, and times as the naive UTC
    the views send (JSON Schema's "date-time" needs an offset they do not have)."""
    spec = fleet.client.get("/openapi.json")
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            if path == "/health":
                continue
            refusal = operation["responses"]["4XX"]["content"]["application/json"]["schema"]
            assert refusal == {"$ref": "#/components/schemas/ErrorPublic"}, (method, path)
    assert '"date-time"' not in str(spec).replace("'", '"')
    created = spec["components"]["schemas"]["TemplateView"]["properties"]["created_at"]
    assert created["description"] == "UTC, ISO 8601, without an offset"
