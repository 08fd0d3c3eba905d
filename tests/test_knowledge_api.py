"""The knowledge base's REST routes: the role matrix of every route (admin, power,
user, guest), approval, validation, listing by tags and pages."""

from __future__ import annotations

from typing import Any

from storage.models import GlobalRole
from tests.helpers import Api, User

BASE = "/api/v1/knowledge"
MISSING = "00000000-0000-4000-8000-000000000000"


async def people(api: Api) -> dict[str, User]:
    return {
        "admin": await api.user("root", GlobalRole.ADMIN),
        "power": await api.user("pat", GlobalRole.POWER),
        "power2": await api.user("pia", GlobalRole.POWER),
        "user": await api.user("uma"),
        "guest": await api.user("gus", GlobalRole.GUEST),
    }


async def add(api: Api, user: User, title: str, **fields: Any) -> dict[str, Any]:
    body = {"title": title, "text": f"{title}: what the team knows.", **fields}
    entry: dict[str, Any] = await api.call("POST", BASE, user=user, json=body, expect=201)
    return entry


async def titles(api: Api, user: User, query: str = "") -> list[str]:
    page = await api.call("GET", BASE + query, user=user)
    return [item["title"] for item in page["items"]]


async def test_create_by_role(api: Api) -> None:
    who = await people(api)
    by_admin = await add(api, who["admin"], "Admin's", tags=["Ops", "ops", "deploy"])
    assert by_admin["approved"] is True
    assert by_admin["approved_by"] == who["admin"].id
    assert by_admin["tags"] == ["ops", "deploy"]  # lower-cased, each once
    assert by_admin["owner_id"] == who["admin"].id
    by_power = await add(api, who["power"], "Power's", source="https://wiki/x")
    assert by_power["approved"] is False and by_power["approved_at"] is None
    assert by_power["source"] == "https://wiki/x"
    for role in ("user", "guest"):
        await api.error(
            "POST", BASE, user=who[role], json={"title": "t", "text": "x"}, expect=403,
            code="forbidden",
        )  # fmt: skip


async def test_read_and_list_by_role(api: Api) -> None:
    who = await people(api)
    approved = await add(api, who["admin"], "Approved")
    mine = await add(api, who["power"], "Pat's pending")
    theirs = await add(api, who["power2"], "Pia's pending")
    assert await titles(api, who["admin"]) == ["Pia's pending", "Pat's pending", "Approved"]
    assert await titles(api, who["power"]) == ["Pat's pending", "Approved"]
    assert await titles(api, who["user"]) == ["Approved"]
    await api.error("GET", BASE, user=who["guest"], expect=403, code="forbidden")

    for role, readable in {
        "admin": (approved, mine, theirs),
        "power": (approved, mine),
        "user": (approved,),
    }.items():
        for entry in (approved, mine, theirs):
            path = f"{BASE}/{entry['id']}"
            if entry in readable:
                assert (await api.call("GET", path, user=who[role]))["id"] == entry["id"]
            else:
                await api.error("GET", path, user=who[role], expect=404, code="not_found")
    await api.error("GET", f"{BASE}/{approved['id']}", user=who["guest"], expect=403,
                    code="forbidden")  # fmt: skip
    await api.error("GET", f"{BASE}/{MISSING}", user=who["admin"], expect=404, code="not_found")
    await api.error("GET", f"{BASE}/nope", user=who["admin"], expect=404, code="not_found")


async def test_update_and_delete_by_role(api: Api) -> None:
    who = await people(api)
    approved = await add(api, who["admin"], "Approved")
    mine = await add(api, who["power"], "Pat's")
    theirs = await add(api, who["power2"], "Pia's")
    change = {"title": "Renamed"}

    # Users and guests change nothing; power users only their own.
    for role in ("user", "guest"):
        for method, body in (("PATCH", change), ("DELETE", None)):
            await api.error(method, f"{BASE}/{approved['id']}", user=who[role], json=body,
                            expect=403, code="forbidden")  # fmt: skip
    await api.error("PATCH", f"{BASE}/{approved['id']}", user=who["power"], json=change,
                    expect=403, code="forbidden")  # fmt: skip
    await api.error("DELETE", f"{BASE}/{approved['id']}", user=who["power"], expect=403,
                    code="forbidden")  # fmt: skip
    await api.error("PATCH", f"{BASE}/{theirs['id']}", user=who["power"], json=change,
                    expect=404, code="not_found")  # fmt: skip
    await api.error("DELETE", f"{BASE}/{theirs['id']}", user=who["power"], expect=404,
                    code="not_found")  # fmt: skip

    renamed = await api.call("PATCH", f"{BASE}/{mine['id']}", user=who["power"], json=change)
    assert renamed["title"] == "Renamed" and renamed["text"] == mine["text"]
    assert await api.call("PATCH", f"{BASE}/{mine['id']}", user=who["power"], json={}) == renamed
    admin_edit = await api.call(
        "PATCH", f"{BASE}/{theirs['id']}", user=who["admin"], json={"tags": ["x"], "source": ""}
    )
    assert admin_edit["tags"] == ["x"] and admin_edit["source"] is None

    await api.call("DELETE", f"{BASE}/{mine['id']}", user=who["power"], expect=204)
    await api.call("DELETE", f"{BASE}/{theirs['id']}", user=who["admin"], expect=204)
    await api.error("GET", f"{BASE}/{theirs['id']}", user=who["admin"], expect=404,
                    code="not_found")  # fmt: skip
    assert await titles(api, who["admin"]) == ["Approved"]


async def test_approve_by_role(api: Api) -> None:
    who = await people(api)
    pending = await add(api, who["power"], "Pending")
    path = f"{BASE}/{pending['id']}/approve"
    for role in ("power", "user", "guest"):
        await api.error("POST", path, user=who[role], expect=403, code="forbidden")
    assert await titles(api, who["user"]) == []
    approved = await api.call("POST", path, user=who["admin"])
    assert approved["approved"] is True and approved["approved_by"] == who["admin"].id
    assert await api.call("POST", path, user=who["admin"]) == approved  # once is enough
    assert await titles(api, who["user"]) == ["Pending"]
    await api.error("POST", f"{BASE}/{MISSING}/approve", user=who["admin"], expect=404,
                    code="not_found")  # fmt: skip

    # Its owner's change makes it pending again; an admin's does not.
    await api.call("PATCH", f"{BASE}/{pending['id']}", user=who["power"], json={"text": "new"})
    assert await titles(api, who["user"]) == []
    await api.call("POST", path, user=who["admin"])
    edited = await api.call(
        "PATCH", f"{BASE}/{pending['id']}", user=who["admin"], json={"text": "newer"}
    )
    assert edited["approved"] is True


async def test_tags_pages_and_validation(api: Api) -> None:
    who = await people(api)
    for number in range(5):
        await add(api, who["admin"], f"Entry {number}", tags=["even" if number % 2 else "odd"])
    assert await titles(api, who["user"], "?tags=odd") == ["Entry 4", "Entry 2", "Entry 0"]
    assert await titles(api, who["user"], "?tags=odd,even") == []
    assert await titles(api, who["user"], "?tags=ODD,") == ["Entry 4", "Entry 2", "Entry 0"]
    first = await api.call("GET", BASE + "?limit=2", user=who["user"])
    assert [item["title"] for item in first["items"]] == ["Entry 4", "Entry 3"]
    second = await api.call(
        "GET", f"{BASE}?limit=2&cursor={first['next_cursor']}", user=who["user"]
    )
    assert [item["title"] for item in second["items"]] == ["Entry 2", "Entry 1"]
    assert first["items"][0]["score"] is None and first["items"][0]["passage"] is None

    user = who["admin"]
    await api.error("GET", BASE + "?tags=a%22b", user=user, expect=422, code="validation_failed")
    await api.error("GET", BASE + "?cursor=zz", user=user, expect=422, code="validation_failed")
    await api.error("GET", BASE + "?limit=51", user=user, expect=422, code="validation_failed")
    for body in (
        {"title": "t"},
        {"title": "", "text": "x"},
        {"title": "t", "text": "a\x00b"},
        {"title": "t", "text": "x", "tags": ["no spaces"]},
        {"title": "t", "text": "x", "tags": ["t"] * 21},
        {"title": "t", "text": "x", "owner_id": user.id},
    ):
        await api.error("POST", BASE, user=user, json=body, expect=422, code="validation_failed")
    await api.error("POST", BASE, json={"title": "t", "text": "x"}, expect=401,
                    code="unauthorized")  # fmt: skip
