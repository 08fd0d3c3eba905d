"""Fuzz: every REST operation, from the app's own OpenAPI document, as each global role.

schemathesis generates requests (valid and invalid bodies, queries, headers and ids)
for each operation in ``GET /api/v1/openapi.json`` and sends them over real HTTP to the
app on 127.0.0.1. The operations that need credentials are fuzzed as a user of each
global role, as an admin's API key, and with made-up credentials; the others once,
without. Path ids are mostly real (a document the caller owns, one they view, one
hidden from them; themselves and another user; an API key), so requests get past the
404s to the permission checks and the handlers; strings are now and then replaced by
ones that have broken servers (``HOSTILE``).

Every answer must be documented for its operation (status, content type, body
schema), none may be a 5xx, an invalid request must be refused, and every error has
the shape of docs/protocol.md §1.3: ``{"error": {"code", "message", "details"?}}``.
What the fuzz found is kept as explicit cases (``FOUND``).

schemathesis' transport blocks, so requests go from a worker thread while the app
serves them on the test's event loop. Each operation and caller has a fixed seed and a
bounded number of examples, so a run is reproducible: about 1,100 requests on SQLite.
On PostgreSQL too, which refuses what SQLite stores (U+0000 in text), but only as an
admin and without credentials (about 360): the role checks do not differ.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import Case, CheckContext, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.errors import FailureGroup

from storage.models import GlobalRole
from tests.helpers import Api

Client = TestClient[web.Request, web.Application]
OPENAPI = "/api/v1/openapi.json"
Operation = schemathesis.APIOperation[Any, Any, Any, Any]

# Examples per operation and caller, by what there is to vary in its requests.
EXAMPLES_WITH_INPUT = 15  # a body or a query
EXAMPLES_WITH_IDS = 6  # path ids only
EXAMPLES_WITH_NOTHING = 3  # headers only
EXAMPLES_API_KEY = 5  # the admin's authorization, reached another way
EXAMPLES_ANONYMOUS = 5  # operations that need credentials, without valid ones: 401

CREDENTIAL_HEADERS = ("Authorization", "X-API-Key")

# Strings that have broken servers, put in place of a generated string now and then:
# in valid requests where the schema allows them, in invalid ones where it does not.
HOSTILE = [
    "\x00",
    "a\x00b",  # PostgreSQL cannot store U+0000 in text
    "\u2028",
    "\ufeff",
    "\U0001f600",
    "\uffff",
    "%00",
    "../",
    "9223372036854775808",  # 2^63: past a signed 64-bit integer
    "-66317059306",  # a number where a date-time goes
    "0001-01-01T00:00:00+14:00",  # a date-time out of range in UTC
    "9999-12-31T23:59:59-14:00",
]
# How long a request may take: the checks are about answers, not speed. schemathesis'
# default (10 s) is a deadline in disguise: POST /knowledge/reindex embeds every entry
# and document again (about 1 s here at a load of 7), and on a 2-core machine under
# heavy load it passed 10 s; the timeout was a failure, and Hypothesis' replay of the
# same request, finished in time, made it "unreliable results". A hang still fails.
REQUEST_TIMEOUT = 120
CONFIG = {
    "request-timeout": REQUEST_TIMEOUT,
    "dictionaries": {"hostile": {"values": HOSTILE}},
    "generation": {"dictionaries": {"string": {"dictionary": "hostile", "probability": 0.3}}},
}


def error_shape(ctx: CheckContext, response: schemathesis.Response, case: Case[Any]) -> bool | None:
    """docs/protocol.md §1.3: an error is ``{"error": {code, message, details?}}``."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and set(error) <= {"code", "message", "details"}, error
    assert isinstance(error.get("code"), str) and error["code"], error
    assert isinstance(error.get("message"), str) and error["message"], error
    return None


CHECKS: list[Callable[..., bool | None]] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    error_shape,
]


async def start(client: Client) -> tuple[Api, schemathesis.BaseSchema, str]:
    """A client of the app, its OpenAPI document loaded by schemathesis, its base URL."""
    api = Api(client)
    document = await api.call("GET", OPENAPI)
    schema = schemathesis.openapi.from_dict(document, config=schemathesis.Config.from_dict(CONFIG))
    return api, schema, str(client.make_url("")).rstrip("/")


# --- the fuzz -----------------------------------------------------------------------------


@dataclass
class Caller:
    """Who sends the requests, and the ids worth putting in their paths."""

    name: str
    headers: dict[str, str] = field(default_factory=dict)
    ids: dict[str, list[str]] = field(default_factory=dict)
    examples: int | None = None  # per operation that needs credentials; None: by its shape


ENTRY = {"title": "Deploying", "text": "Deploys go out from main on weekdays.", "tags": ["ops"]}


async def make_callers(api: Api) -> list[Caller]:
    """One caller per global role, an admin's API key, and one without credentials."""
    other = await api.user("other")
    admin = await api.user("fuzz_admin", GlobalRole.ADMIN)
    keys = [
        await api.call("POST", "/api/v1/api-keys", user=admin, json={"name": name}, expect=201)
        for name in ("fuzzed", "fuzzing")
    ]
    callers = [Caller("anonymous", examples=EXAMPLES_ANONYMOUS)]
    for role in GlobalRole:
        user = admin if role is GlobalRole.ADMIN else await api.user(f"fuzz_{role}", role)
        if role is GlobalRole.GUEST:  # guests cannot create documents
            own = await api.document(other, "edited by the guest")
            await api.share(other, own["id"], user, "editor")
        else:
            own = await api.document(user, f"{role}'s")
        viewed = await api.document(other, f"viewed by {role}")
        await api.share(other, viewed["id"], user, "viewer")
        hidden = await api.document(other, f"hidden from {role}")
        ids = {
            "document_id": [own["id"], viewed["id"], hidden["id"]],
            "user_id": [user.id, other.id],
            "key_id": [keys[0]["id"]],  # not the one the API-key caller uses
        }
        callers.append(Caller(str(role), user.headers, ids))
        if role is GlobalRole.ADMIN:
            api_key = {"X-API-Key": keys[1]["key"]}
            callers.append(Caller("admin's API key", api_key, ids, EXAMPLES_API_KEY))
    # Knowledge entries: an approved one (every reader's), one pending of the power
    # user's (theirs and the admins'), one pending of another power user's (hidden).
    power = await api.user("fuzz_power2", GlobalRole.POWER)
    by_role = {caller.name: caller.headers for caller in callers}
    entries = []
    for headers in (admin.headers, by_role[GlobalRole.POWER], power.headers):
        entry = await api.call("POST", "/api/v1/knowledge", headers=headers, json=ENTRY, expect=201)
        entries.append(entry["id"])
    for caller in callers:
        caller.ids["entry_id"] = entries
    return callers


def plan(schema: schemathesis.BaseSchema, caller: Caller) -> list[tuple[Operation, int]]:
    """The operations ``caller`` fuzzes, each with its number of examples; deletions
    last (a document deleted or left ends what the other operations can reach)."""
    planned: list[tuple[Operation, int]] = []
    for path, item in schema.raw_schema["paths"].items():
        for method, raw in item.items():
            secured = bool(raw.get("security"))
            if caller.headers and not secured:
                continue
            where = {parameter["in"] for parameter in raw.get("parameters", [])}
            if secured and caller.examples:
                examples = caller.examples
            elif "requestBody" in raw or "query" in where:
                examples = EXAMPLES_WITH_INPUT
            else:
                examples = EXAMPLES_WITH_IDS if where else EXAMPLES_WITH_NOTHING
            planned.append((schema[path][method.upper()], examples))
    return sorted(planned, key=lambda entry: entry[0].method.upper() == "DELETE")


def fuzz(operations: list[tuple[Operation, int]], base_url: str, caller: Caller) -> list[str]:
    """Fuzz ``operations`` as ``caller``: a report for each operation that failed."""
    failures: list[str] = []
    session = requests.Session()

    def send(case: Case[Any], data: st.DataObject) -> None:
        if caller.headers and case.headers:  # generated ones would stand in for the caller's
            for name in CREDENTIAL_HEADERS:
                case.headers.pop(name, None)
        params = case.path_parameters
        for name in params or {}:
            real = caller.ids.get(name)
            # Mostly a real id; the generated text a quarter of the time.
            if params and real and data.draw(st.integers(0, 3)):
                params[name] = data.draw(st.sampled_from(real))
        response = case.call(base_url=base_url, session=session, headers=caller.headers)
        case.validate_response(response, checks=CHECKS, headers=caller.headers)

    try:
        for operation, examples in operations:
            # Each caller's own seed per operation: the same requests every run, not
            # the same ones for each role.
            @seed(zlib.crc32(f"{caller.name} {operation.label}".encode()))
            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
                # schemathesis' strategies filter, and the machine may be busy.
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            )
            @given(
                case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE)
                | operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
                data=st.data(),
            )
            def run(case: Case[Any], data: st.DataObject) -> None:
                send(case, data)

            try:
                run()
            except (Exception, FailureGroup) as exc:
                failures.append(f"as {caller.name}: {operation.label}: {exc}")
    finally:
        session.close()
    return failures


async def test_every_operation_as_every_role(client: Client, backend: str) -> None:
    api, schema, base_url = await start(client)
    callers = await make_callers(api)
    if backend == "postgres":  # what differs is storage: as admin, who reaches every handler
        callers = [caller for caller in callers if caller.name in ("anonymous", "admin")]
    failures: list[str] = []
    for caller in callers:
        failures += await asyncio.to_thread(fuzz, plan(schema, caller), base_url, caller)
    assert not failures, "\n\n".join(failures)


# --- what it found ------------------------------------------------------------------------

DOCUMENT = "/api/v1/documents/{document_id}"
FOUND: list[tuple[str, str, dict[str, Any], int]] = [
    # Answered text/plain and application/octet-stream; the document said only JSON.
    ("GET", DOCUMENT + "/content", {"query": {"format": "text"}}, 200),
    ("GET", DOCUMENT + "/content", {"query": {"format": "yjs"}}, 200),
    # 500 on PostgreSQL, which cannot store U+0000 in text.
    ("POST", "/api/v1/documents", {"body": {"title": "a\x00b"}}, 422),
    ("PATCH", DOCUMENT, {"body": {"title": "\x00"}}, 422),
    ("POST", "/api/v1/api-keys", {"body": {"name": "key\x00"}}, 422),
    ("GET", "/api/v1/users", {"query": {"cursor": "\x00"}}, 422),
    # A number was read as a Unix time (in milliseconds, here).
    ("GET", "/api/v1/usage", {"query": {"since": "-66317059306"}}, 422),
    # A key given twice was read as its first value.
    ("GET", "/api/v1/documents", {"query": {"cursor": ["", "x"]}}, 422),
    ("GET", "/api/v1/users", {"query": {"limit": ["1", "2"]}}, 422),
]


async def test_what_the_fuzz_found(client: Client) -> None:
    api, schema, base_url = await start(client)
    admin = await api.user("admin", GlobalRole.ADMIN)
    document = await api.document(admin)

    def send(method: str, path: str, data: dict[str, Any]) -> int:
        ids = {"document_id": document["id"]} if "{document_id}" in path else None
        case = schema[path][method].Case(path_parameters=ids, **data)
        response = case.call(base_url=base_url, headers=admin.headers)
        case.validate_response(response, checks=CHECKS, headers=admin.headers)
        return response.status_code

    for method, path, data, status in FOUND:
        assert await asyncio.to_thread(send, method, path, data) == status, (method, path, data)
