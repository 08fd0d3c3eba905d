"""REST routes for documents and their members, on both database backends."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from app.keys import SESSIONS
from storage.models import DocumentMember, GlobalRole
from tests.helpers import Api, User

DOCS = "/api/v1/documents"


def doc_path(document_id: str) -> str:
    return f"{DOCS}/{document_id}"


def member_path(document_id: str, user_id: str) -> str:
    return f"{DOCS}/{document_id}/members/{user_id}"


def when(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp)


def cursor_of(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


async def members(api: Api, user: User, document_id: str) -> dict[str, str]:
    """username -> role, as ``user`` sees the member list."""
    body = await api.call("GET", f"{DOCS}/{document_id}/members", user=user)
    return {item["username"]: item["role"] for item in body["items"]}


async def team(api: Api) -> tuple[User, User, User, User, dict[str, Any]]:
    """An owner's document shared with an editor and a viewer, plus an outsider."""
    owner, editor, viewer, outsider = [
        await api.user(name) for name in ("owner", "editor", "viewer", "outsider")
    ]
    document = await api.document(owner, "Plan")
    await api.share(owner, document["id"], editor, "editor")
    await api.share(owner, document["id"], viewer, "viewer")
    return owner, editor, viewer, outsider, document


# --- create -----------------------------------------------------------------------------


async def test_create_returns_the_document_with_owner_role(api: Api) -> None:
    alice = await api.user("alice")
    body = await api.call("POST", DOCS, user=alice, json={"title": "  Plan  "}, expect=201)
    assert set(body) == {"id", "title", "owner_id", "role", "created_at", "updated_at"}
    assert body["title"] == "Plan"
    assert body["owner_id"] == alice.id
    assert body["role"] == "owner"
    uuid.UUID(body["id"])
    assert await api.call("GET", doc_path(body["id"]), user=alice) == body


async def test_create_accepts_a_200_character_title(api: Api) -> None:
    alice = await api.user("alice")
    body = await api.document(alice, "x" * 200)
    assert body["title"] == "x" * 200


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"title": ""}, "title"),
        ({"title": "   "}, "title"),
        ({"title": "x" * 201}, "title"),
        ({"title": 5}, "title"),
        ({}, "title"),
        ({"title": "ok", "colour": "red"}, "colour"),
    ],
)
async def test_create_rejects_invalid_bodies(api: Api, payload: Any, field: str) -> None:
    alice = await api.user("alice")
    error = await api.error(
        "POST", DOCS, user=alice, json=payload, expect=422, code="validation_failed"
    )
    assert field in [detail["field"] for detail in error["details"]]
    assert (await api.call("GET", DOCS, user=alice))["items"] == []


async def test_guests_and_anonymous_callers_cannot_create(api: Api) -> None:
    guest = await api.user("guest", GlobalRole.GUEST)
    await api.error("POST", DOCS, user=guest, json={"title": "Plan"}, expect=403, code="forbidden")
    await api.error("POST", DOCS, json={"title": "Plan"}, expect=401, code="unauthorized")
    assert (await api.call("GET", DOCS, user=guest))["items"] == []


# --- list -------------------------------------------------------------------------------


async def test_list_shows_only_my_documents_newest_first(api: Api) -> None:
    alice, bob = await api.user("alice"), await api.user("bob")
    first = await api.document(alice, "first")
    await api.document(bob, "bobs private")
    shared = await api.document(bob, "bobs shared")
    await api.share(bob, shared["id"], alice, "viewer")
    last = await api.document(alice, "last")
    body = await api.call("GET", DOCS, user=alice)
    assert [(item["id"], item["role"]) for item in body["items"]] == [
        (last["id"], "owner"),
        (shared["id"], "viewer"),
        (first["id"], "owner"),
    ]
    assert body["next_cursor"] is None


async def test_list_pages_through_everything_once(api: Api) -> None:
    """Seven documents in pages of three: 3 + 3 + 1, no duplicates, no gaps."""
    alice = await api.user("alice")
    created = [(await api.document(alice, f"doc {i}"))["id"] for i in range(7)]
    seen: list[str] = []
    sizes: list[int] = []
    cursor: str | None = None
    for _ in range(3):
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = await api.call("GET", DOCS, user=alice, params=params)
        sizes.append(len(page["items"]))
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
    assert sizes == [3, 3, 1]
    assert cursor is None
    assert seen == list(reversed(created))


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"limit": "0"}, id="limit-0"),
        pytest.param({"limit": "101"}, id="limit-101"),
        pytest.param({"limit": "abc"}, id="limit-abc"),
        pytest.param({"colour": "red"}, id="unknown-key"),
        pytest.param({"cursor": "not a cursor!"}, id="cursor-garbage"),
        pytest.param({"cursor": cursor_of(f"yesterday|{uuid.uuid4()}")}, id="cursor-bad-time"),
        pytest.param({"cursor": cursor_of("2024-01-01T00:00:00+00:00|x")}, id="cursor-bad-id"),
        # A timestamp without a zone is not one this API hands out.
        pytest.param(
            {"cursor": cursor_of(f"2024-01-01T00:00:00|{uuid.uuid4()}")}, id="cursor-naive-time"
        ),
        pytest.param({"cursor": "x" * 129}, id="cursor-too-long"),
    ],
)
async def test_list_rejects_bad_queries(api: Api, params: dict[str, str]) -> None:
    alice = await api.user("alice")
    await api.document(alice)
    await api.error("GET", DOCS, user=alice, params=params, expect=422, code="validation_failed")


async def test_list_accepts_limit_bounds(api: Api) -> None:
    alice = await api.user("alice")
    await api.document(alice)
    for limit in ("1", "100"):
        page = await api.call("GET", DOCS, user=alice, params={"limit": limit})
        assert len(page["items"]) == 1
        assert page["next_cursor"] is None


# --- get / patch / delete ---------------------------------------------------------------


async def test_each_member_sees_their_own_role(api: Api) -> None:
    owner, editor, viewer, _, document = await team(api)
    for user, role in ((owner, "owner"), (editor, "editor"), (viewer, "viewer")):
        body = await api.call("GET", doc_path(document["id"]), user=user)
        assert body["role"] == role
        assert body["owner_id"] == owner.id


async def test_owner_and_editor_rename_viewer_cannot(api: Api) -> None:
    owner, editor, viewer, _, document = await team(api)
    path = doc_path(document["id"])
    await api.error(
        "PATCH", path, user=viewer, json={"title": "Hijack"}, expect=403, code="forbidden"
    )
    assert (await api.call("GET", path, user=owner))["title"] == "Plan"
    renamed = await api.call("PATCH", path, user=editor, json={"title": " Edited "})
    assert renamed["title"] == "Edited"
    assert renamed["role"] == "editor"
    assert when(renamed["updated_at"]) > when(document["updated_at"])
    assert renamed["created_at"] == document["created_at"]
    renamed = await api.call("PATCH", path, user=owner, json={"title": "Final"})
    assert renamed["role"] == "owner"
    assert (await api.call("GET", path, user=viewer))["title"] == "Final"


async def test_rename_validates_the_title(api: Api) -> None:
    owner, *_, document = await team(api)
    path = doc_path(document["id"])
    for payload in ({"title": "  "}, {"title": "x" * 201}, {"name": "x"}, {"title": None}):
        await api.error(
            "PATCH", path, user=owner, json=payload, expect=422, code="validation_failed"
        )
    assert (await api.call("GET", path, user=owner))["title"] == "Plan"


async def test_only_the_owner_deletes(api: Api) -> None:
    owner, editor, viewer, _, document = await team(api)
    path = doc_path(document["id"])
    for user in (editor, viewer):
        await api.error("DELETE", path, user=user, expect=403, code="forbidden")
    assert (await api.call("GET", path, user=editor))["title"] == "Plan"
    assert await api.call("DELETE", path, user=owner, expect=204) is None
    for user in (owner, editor, viewer):
        await api.error("GET", path, user=user, expect=404, code="not_found")
        await api.error("PATCH", path, user=user, json={"title": "x"}, expect=404, code="not_found")
        await api.error("DELETE", path, user=user, expect=404, code="not_found")
        await api.error("GET", f"{path}/members", user=user, expect=404, code="not_found")
        assert (await api.call("GET", DOCS, user=user))["items"] == []


async def test_delete_cascades_to_members(api: Api) -> None:
    """No membership rows outlive their document (SQLite needs foreign_keys=ON)."""
    owner, *_, document = await team(api)
    await api.call("DELETE", doc_path(document["id"]), user=owner, expect=204)
    async with api.client.app[SESSIONS]() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(DocumentMember)
            .where(DocumentMember.document_id == uuid.UUID(document["id"]))
        )
    assert count == 0


async def test_non_member_cannot_tell_a_document_exists(api: Api) -> None:
    """A non-member gets exactly the answers given for an id that does not exist."""
    owner, _, _, outsider, document = await team(api)
    answers = []
    for document_id in (document["id"], str(uuid.uuid4())):
        path = doc_path(document_id)
        answers.append(
            [
                await api.error("GET", path, user=outsider, expect=404, code="not_found"),
                await api.error(
                    "PATCH", path, user=outsider, json={"title": "x"}, expect=404, code="not_found"
                ),
                await api.error("DELETE", path, user=outsider, expect=404, code="not_found"),
                await api.error(
                    "GET", f"{path}/members", user=outsider, expect=404, code="not_found"
                ),
            ]
        )
    assert answers[0] == answers[1]
    assert (await api.call("GET", doc_path(document["id"]), user=owner))["title"] == "Plan"


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
async def test_malformed_document_id_is_not_found(api: Api, method: str) -> None:
    alice = await api.user("alice")
    json = {"title": "x"} if method == "PATCH" else None
    await api.error(
        method, doc_path("not-a-uuid"), user=alice, json=json, expect=404, code="not_found"
    )


# --- members ----------------------------------------------------------------------------


async def test_member_list_shows_everyone_with_usernames(api: Api) -> None:
    owner, editor, viewer, _, document = await team(api)
    body = await api.call("GET", f"{DOCS}/{document['id']}/members", user=viewer)
    assert [(item["user_id"], item["username"], item["role"]) for item in body["items"]] == [
        (owner.id, "owner", "owner"),
        (editor.id, "editor", "editor"),
        (viewer.id, "viewer", "viewer"),
    ]
    assert set(body["items"][0]) == {"user_id", "username", "role", "added_at"}


async def test_put_adds_then_changes_a_role(api: Api) -> None:
    owner, bob = await api.user("owner"), await api.user("bob")
    document = await api.document(owner)
    path = member_path(document["id"], bob.id)
    added = await api.call("PUT", path, user=owner, json={"role": "viewer"}, expect=201)
    assert (added["user_id"], added["username"], added["role"]) == (bob.id, "bob", "viewer")
    changed = await api.call("PUT", path, user=owner, json={"role": "editor"}, expect=200)
    assert changed["role"] == "editor"
    assert changed["added_at"] == added["added_at"]
    assert (await api.call("GET", doc_path(document["id"]), user=bob))["role"] == "editor"
    assert await members(api, owner, document["id"]) == {"owner": "owner", "bob": "editor"}


async def test_only_the_owner_manages_members(api: Api) -> None:
    owner, editor, viewer, outsider, document = await team(api)
    before = await members(api, owner, document["id"])
    for user in (editor, viewer):
        await api.error(
            "PUT",
            member_path(document["id"], outsider.id),
            user=user,
            json={"role": "viewer"},
            expect=403,
            code="forbidden",
        )
        other = viewer if user is editor else editor
        await api.error(
            "DELETE", member_path(document["id"], other.id), user=user, expect=403, code="forbidden"
        )
    await api.error(
        "PUT",
        member_path(document["id"], outsider.id),
        user=outsider,
        json={"role": "editor"},
        expect=404,
        code="not_found",
    )
    assert await members(api, owner, document["id"]) == before


async def test_failed_puts_change_nothing(api: Api) -> None:
    owner, editor, _, _, document = await team(api)
    before = await members(api, owner, document["id"])
    cases: list[tuple[str, Any, int, str]] = [
        (str(uuid.uuid4()), {"role": "editor"}, 404, "not_found"),
        ("not-a-uuid", {"role": "editor"}, 404, "not_found"),
        (owner.id, {"role": "editor"}, 409, "conflict"),
        (owner.id, {"role": "viewer"}, 409, "conflict"),
        (editor.id, {"role": "admin"}, 422, "validation_failed"),
        (editor.id, {"role": "viewer", "extra": 1}, 422, "validation_failed"),
        (editor.id, {}, 422, "validation_failed"),
    ]
    for user_id, payload, status, code in cases:
        await api.error(
            "PUT",
            member_path(document["id"], user_id),
            user=owner,
            json=payload,
            expect=status,
            code=code,
        )
    assert await members(api, owner, document["id"]) == before
    assert (await api.call("GET", doc_path(document["id"]), user=owner))["owner_id"] == owner.id


async def test_post_adds_a_member_by_username_or_id(api: Api) -> None:
    owner, bob, cy = await api.user("owner"), await api.user("bob"), await api.user("cyd")
    document = await api.document(owner)
    path = f"{DOCS}/{document['id']}/members"
    body = {"username": "  Bob ", "role": "viewer"}  # as typed: spaces, a capital
    added = await api.call("POST", path, user=owner, json=body, expect=201)
    assert (added["user_id"], added["username"], added["role"]) == (bob.id, "bob", "viewer")
    changed = await api.call(
        "POST", path, user=owner, json={"username": "bob", "role": "editor"}, expect=200
    )
    assert (changed["role"], changed["added_at"]) == ("editor", added["added_at"])
    by_id = await api.call(
        "POST", path, user=owner, json={"user_id": cy.id, "role": "viewer"}, expect=201
    )
    assert by_id["username"] == "cyd"
    assert (await api.call("GET", doc_path(document["id"]), user=bob))["role"] == "editor"
    assert await members(api, owner, document["id"]) == {
        "owner": "owner",
        "bob": "editor",
        "cyd": "viewer",
    }
    # role "owner" hands the document over, as PUT does.
    await api.call("POST", path, user=owner, json={"username": "cyd", "role": "owner"})
    assert (await api.call("GET", doc_path(document["id"]), user=cy))["owner_id"] == cy.id
    assert (await members(api, cy, document["id"]))["owner"] == "editor"


async def test_post_an_unknown_user_is_user_not_found(api: Api) -> None:
    owner, _, _, _, document = await team(api)
    before = await members(api, owner, document["id"])
    path = f"{DOCS}/{document['id']}/members"
    body = await api.error(
        "POST",
        path,
        user=owner,
        json={"username": "nobody", "role": "editor"},
        expect=404,
        code="user_not_found",
    )
    assert body["message"] == "no user is named nobody"
    await api.error(
        "POST",
        path,
        user=owner,
        json={"user_id": str(uuid.uuid4()), "role": "editor"},
        expect=404,
        code="user_not_found",
    )
    assert await members(api, owner, document["id"]) == before


async def test_post_tells_nobody_but_the_owner_whether_a_username_exists(api: Api) -> None:
    owner, editor, viewer, outsider, document = await team(api)
    before = await members(api, owner, document["id"])
    path = f"{DOCS}/{document['id']}/members"
    for name in ("outsider", "nobody"):  # an account, and no account: the same answers
        payload = {"username": name, "role": "editor"}
        for member in (editor, viewer):
            body = await api.error(
                "POST", path, user=member, json=payload, expect=403, code="forbidden"
            )
            assert body["message"] == "only the owner can change members"
        body = await api.error(
            "POST", path, user=outsider, json=payload, expect=404, code="not_found"
        )
        assert body["message"] == "document not found"
        missing = f"{DOCS}/{uuid.uuid4()}/members"
        body = await api.error(
            "POST", missing, user=owner, json=payload, expect=404, code="not_found"
        )
        assert body["message"] == "document not found"
    assert await members(api, owner, document["id"]) == before


@pytest.mark.parametrize(
    ("payload", "field", "kind"),
    [
        ({"role": "editor"}, "(body)", "value_error"),
        (
            {"username": "bob", "user_id": str(uuid.uuid4()), "role": "editor"},
            "(body)",
            "value_error",
        ),
        ({"username": "b", "role": "editor"}, "username", "string_too_short"),
        ({"username": "bob smith", "role": "editor"}, "username", "string_pattern_mismatch"),
        ({"username": "bob"}, "role", "missing"),
        ({"username": "bob", "role": "admin"}, "role", "enum"),
        ({"user_id": "42", "role": "editor"}, "user_id", "uuid_parsing"),
        ({"username": "bob", "role": "editor", "extra": 1}, "extra", "extra_forbidden"),
    ],
)
async def test_post_rejects_invalid_bodies(api: Api, payload: Any, field: str, kind: str) -> None:
    owner = await api.user("owner")
    await api.user("bob")  # exists: what is refused is the body, not a missing user
    document = await api.document(owner)
    body = await api.error(
        "POST",
        f"{DOCS}/{document['id']}/members",
        user=owner,
        json=payload,
        expect=422,
        code="validation_failed",
    )
    assert {"field": field, "type": kind} in [
        {"field": detail["field"], "type": detail["type"]} for detail in body["details"]
    ], body
    assert await members(api, owner, document["id"]) == {"owner": "owner"}


async def test_put_owner_hands_the_document_over(api: Api) -> None:
    """The old owner stays as an editor; the new owner alone may delete."""
    owner, editor, viewer, _, document = await team(api)
    path = doc_path(document["id"])
    body = await api.call(
        "PUT", member_path(document["id"], editor.id), user=owner, json={"role": "owner"}
    )
    assert (body["user_id"], body["role"]) == (editor.id, "owner")
    assert await members(api, viewer, document["id"]) == {
        "owner": "editor",
        "editor": "owner",
        "viewer": "viewer",
    }
    for user in (owner, editor, viewer):
        assert (await api.call("GET", path, user=user))["owner_id"] == editor.id
    assert (await api.call("GET", path, user=owner))["role"] == "editor"
    await api.error("DELETE", path, user=owner, expect=403, code="forbidden")
    await api.error(
        "PUT",
        member_path(document["id"], viewer.id),
        user=owner,
        json={"role": "editor"},
        expect=403,
        code="forbidden",
    )
    await api.call("DELETE", path, user=editor, expect=204)
    await api.error("GET", path, user=owner, expect=404, code="not_found")


async def test_put_owner_role_on_the_owner_is_a_no_op(api: Api) -> None:
    owner, *_, document = await team(api)
    before = await members(api, owner, document["id"])
    body = await api.call(
        "PUT", member_path(document["id"], owner.id), user=owner, json={"role": "owner"}
    )
    assert (body["user_id"], body["role"]) == (owner.id, "owner")
    assert await members(api, owner, document["id"]) == before


async def test_removed_member_loses_access(api: Api) -> None:
    owner, editor, _, _, document = await team(api)
    path = member_path(document["id"], editor.id)
    assert await api.call("DELETE", path, user=owner, expect=204) is None
    await api.error("GET", doc_path(document["id"]), user=editor, expect=404, code="not_found")
    assert "editor" not in await members(api, owner, document["id"])
    assert (await api.call("GET", DOCS, user=editor))["items"] == []
    await api.error("DELETE", path, user=owner, expect=404, code="not_found")


async def test_a_member_can_leave(api: Api) -> None:
    owner, editor, viewer, _, document = await team(api)
    for user in (viewer, editor):
        await api.call("DELETE", member_path(document["id"], user.id), user=user, expect=204)
        await api.error("GET", doc_path(document["id"]), user=user, expect=404, code="not_found")
    assert await members(api, owner, document["id"]) == {"owner": "owner"}


async def test_failed_removals_change_nothing(api: Api) -> None:
    owner, editor, _, outsider, document = await team(api)
    before = await members(api, owner, document["id"])
    await api.error(
        "DELETE", member_path(document["id"], owner.id), user=owner, expect=409, code="conflict"
    )
    await api.error(
        "DELETE",
        member_path(document["id"], editor.id),
        user=outsider,
        expect=404,
        code="not_found",
    )
    for user_id in (outsider.id, str(uuid.uuid4()), "not-a-uuid"):
        await api.error(
            "DELETE", member_path(document["id"], user_id), user=owner, expect=404, code="not_found"
        )
    assert await members(api, owner, document["id"]) == before
