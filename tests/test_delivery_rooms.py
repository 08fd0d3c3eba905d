"""Room membership, recorded once and read both ways (realtime/delivery/rooms.py)."""

from __future__ import annotations

import pytest

from realtime.delivery import Delivery
from realtime.delivery.rooms import Endpoint, Rooms
from tests.test_delivery_outbox import Recorder


def endpoint(sid: str, recorder: Recorder) -> Endpoint:
    return Endpoint(sid, "/", recorder.outbox())


def test_membership_is_kept_in_both_directions() -> None:
    recorder = Recorder()
    delivery = Delivery()
    for sid in ("a", "b"):
        delivery.add(endpoint(sid, recorder))
    assert delivery.join("room", "a") and delivery.join("room", "b")
    assert not delivery.join("room", "a")  # already in
    assert not delivery.join("room", "nobody")  # no such connection
    assert delivery.members("room") == ["a", "b"]
    assert delivery.leave("room", "a") and not delivery.leave("room", "a")
    delivery.remove("b")
    assert delivery.members("room") == [] and "room" not in delivery.rooms


def test_a_disconnect_visits_only_the_rooms_of_that_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = Recorder()
    delivery = Delivery()
    crowd = endpoint("crowd", recorder)
    delivery.add(crowd)
    for room in range(5_000):  # a busy server: many rooms the leaver is not in
        delivery.join(("doc", room), "crowd")
    delivery.add(endpoint("leaver", recorder))
    delivery.join(("doc", 1), "leaver")
    delivery.join(("user", "u"), "leaver")

    visited: list[object] = []
    leave = Rooms.leave

    def counting(self: Rooms, room: object, member: Endpoint) -> bool:
        visited.append(room)
        return leave(self, room, member)

    monkeypatch.setattr(Rooms, "leave", counting)
    delivery.remove("leaver")
    assert sorted(map(str, visited)) == ["('doc', 1)", "('user', 'u')"]
    assert delivery.members(("doc", 1)) == ["crowd"] and len(delivery.rooms) == 5_000
