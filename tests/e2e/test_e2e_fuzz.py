"""A property-based fuzz of the whole HTTP API, generated from the server's own OpenAPI
description by schemathesis, against a real ``goldfleet serve`` process with the sim driver.

The property: whatever is sent, the answer is never a 5xx, and every answer matches what the
description promises (status code, content type, body schema; refusals are ``ErrorPublic``).
Inputs come from schemathesis' coverage phase (boundary values: a bound and one past it, wrong
types, missing and unexpected fields, malformed or unsupported content types, methods a route
does not take) and its fuzzing phase (random valid and invalid requests, ``EXAMPLES`` of each
per route). Half of the path parameters are swapped for objects that exist (template ``base``,
clone ``base-001``, operation 1, version 1, pool ``desks``, site ``branch``), so the fuzz
reaches the rules behind the lookups, not only the 404s. The ``/sync/`` routes are called with
the site token they need, every other route with an admin token of the fuzz's own (a fuzzed
``DELETE /tokens/admin`` would otherwise lock the rest of the run out).

``GOLDFLEET_FUZZ_EXAMPLES=200 pytest tests/e2e/test_e2e_fuzz.py -s`` runs a bigger budget;
``-s`` shows what was sent (docs/operations.md, "Fuzzing the API").
"""

from __future__ import annotations

import os
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode, HookContext
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = int(os.environ.get("GOLDFLEET_FUZZ_EXAMPLES", "10"))
CHECKS = [
    not_a_server_error,  # no 5xx, ever
    status_code_conformance,  # only documented status codes (2xx of the route, 4XX)
    content_type_conformance,  # only documented content types
    response_schema_conformance,  # bodies as described, refusals included
    negative_data_rejection,  # what the description forbids (a bound + 1, a wrong type) is a 4xx
]

# path parameters → an object that exists in the seeded world; ``name`` depends on the route
EXISTING = {
    "op_id": "1",
    "number": "1",
    "template": "base",
    "vm": "base-001",
    "user": "alice",
    "host": "sim-host-1",
}
NAMES = {"/templates/": "base", "/clones/": "base-001", "/pools/": "desks", "/sites/": "branch"}
NAMES["/clusters/"] = "pve"


class Tally:
    """What the fuzz sent: requests by route and by input class, and the time they took."""

    def __init__(self) -> None:
        self.routes: Counter[str] = Counter()
        self.classes: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.existing = 0  # requests whose path named an object that exists
        self.started = time.monotonic()

    def add(self, case: Case, status: int) -> None:
        self.routes[f"{case.method} {case.path}"] += 1
        self.statuses[f"{status // 100}xx"] += 1
        known = {*EXISTING.values(), *NAMES.values()}
        params = case.path_parameters or {}
        self.existing += bool(params) and all(str(v) in known for v in params.values())
        meta = case.meta
        if meta is not None:
            scenario = getattr(meta.phase.data, "scenario", None)
            kind = scenario.value if scenario is not None else "random"
            self.classes[f"{meta.phase.name.value} {meta.generation.mode.value} {kind}"] += 1

    def report(self) -> str:
        lines = [
            f"fuzz: {sum(self.routes.values())} requests, {len(self.routes)} method and path"
            f" pairs, {time.monotonic() - self.started:.0f} s ({EXAMPLES} examples per operation"
            f" and mode); answers {dict(sorted(self.statuses.items()))}; {self.existing} named"
            " objects that exist"
        ]
        lines += [f"  {n:6d}  {what}" for what, n in sorted(self.classes.items())]
        return "\n".join(lines)


def with_existing_objects(context: HookContext, case: Case) -> st.SearchStrategy[Case]:
    """A valid case as generated, or the same with every path parameter that names an object
    swapped for one that exists; an invalid case stays as generated (a swap would make it valid).
    Tokens and keys are never swapped: revoking them is not what is under test."""
    params = case.path_parameters or {}
    if case.meta is None or case.meta.generation.mode != GenerationMode.POSITIVE or not params:
        return st.just(case)
    known = {}
    for key in params:
        if key == "name":
            value = next((v for prefix, v in NAMES.items() if case.path.startswith(prefix)), None)
        else:
            value = EXISTING.get(key)
        if value is not None:
            known[key] = value
    if not known:
        return st.just(case)

    def swapped(swap: bool) -> Case:
        if swap:
            case.path_parameters = {**params, **known}
        return case

    return st.booleans().map(swapped)


@pytest.fixture
def api(server: Any, template: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """The server's OpenAPI description (read with an admin token), on a seeded world: template
    ``base`` with two clones (operation 1 made them), pool ``desks``, site ``branch``."""
    # schemathesis 4.32's fixture-based loader renames the running test through
    # ``node._nodeid``, a name pytest 9.2 no longer has; give it one (reporting only)
    request.node._nodeid = request.node.nodeid
    admin = server.client()
    admin.post("/clones", {"template": template, "count": 2, "wait": True})
    admin.post("/pools", {"name": "desks", "template": template, "max": 2})
    site_token = admin.post("/sites", {"name": "branch"})["token"]
    admin.post("/clusters", {"name": "pve", "hosts": ["sim-host-1"], "coordinator": "sim-host-1"})
    fuzz_token = admin.post("/tokens", {"name": f"fuzz-{secrets.token_hex(8)}"})["token"]
    request.node.tokens = {"admin": fuzz_token, "site": site_token}
    request.node.tally = tally = Tally()

    schema = schemathesis.openapi.from_url(
        f"{server.url}/openapi.json", headers={"Authorization": f"Bearer {fuzz_token}"}
    )
    schema.config.update(base_url=server.url)
    schema.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=EXAMPLES
    )
    schema.hook("flatmap_case")(with_existing_objects)
    yield schema
    print(f"\n{tally.report()}")


lazy = schemathesis.pytest.from_fixture("api")


@pytest.mark.slow
@pytest.mark.timeout(300 + 30 * EXAMPLES)
@lazy.parametrize()
def test_no_input_gets_a_5xx_and_every_answer_is_as_described(
    case: Case, request: pytest.FixtureRequest
) -> None:
    tokens = request.node.tokens
    token = tokens["site"] if case.path.startswith("/sync/") else tokens["admin"]
    headers = {"Authorization": f"Bearer {token}"}
    response = case.call(headers=headers, timeout=60)
    request.node.tally.add(case, response.status_code)
    case.validate_response(response, checks=CHECKS, headers=headers)
