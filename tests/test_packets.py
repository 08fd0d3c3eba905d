"""The plain event decoder (realtime/packets.py ``plain_event``) against the packet class
it stands in for: whatever it decodes, ``CheckedPacket`` decodes the same; it never
raises; and it takes the packets clients send."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from realtime.packets import CheckedPacket, UndecodablePacket, plain_event
from realtime.server import _OrjsonModule


@pytest.fixture(autouse=True, scope="module")
def server_json() -> Iterator[None]:
    # What RoomServer gives python-socketio (its packet class decodes with it); undone
    # as it was (inherited from python-socketio's Packet, not set on the class).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CheckedPacket, "json", _OrjsonModule)
        yield


def general(encoded: str) -> tuple[str | None, int | None, Any] | UndecodablePacket:
    try:
        packet = CheckedPacket(encoded_packet=encoded)
    except UndecodablePacket as exc:
        return exc
    return packet.namespace, packet.id, packet.data


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ('2["chat:send",{"text":"hi"}]', (None, None, ["chat:send", {"text": "hi"}])),
        ('27["chat:send",{}]', (None, 7, ["chat:send", {}])),
        ('2/yjs|a1b2,12["awareness-update",[1]]', ("/yjs|a1b2", 12, ["awareness-update", [1]])),
        ('2/admin,["x"]', ("/admin", None, ["x"])),
        ("2007[1.5]", (None, 7, [1.5])),
        ('29007199254740991["x"]', (None, 9007199254740991, ["x"])),
    ],
)
def test_the_shapes_clients_send_are_decoded_as_the_packet_class_does(
    encoded: str, decoded: tuple[Any, ...]
) -> None:
    assert plain_event(encoded) == decoded
    assert general(encoded) == decoded


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "2",
        "3[]",  # an ack
        "5",
        '51-["x",{"_placeholder":true,"num":0}]',  # a binary event
        '21-["x"]',  # attachments in a text event
        "2[]",  # no name
        "2[true]",  # a bool is no name
        '2[null,"x"]',
        '2{"a":1}',
        "2 []",
        '2["x"',  # cut short
        '2["\\ud800"]',  # orjson refuses a lone surrogate, the stdlib takes it
        f'2{"1" * 17}["x"]',  # an id longer than the plain path takes
        '2/ns?x=1,["x"]',  # a query in the namespace
        '2/ns["x"]',  # no comma after the namespace
        '2\u0661["x"]',  # a digit of another script
        '21\u0661["x"]',
    ],
)
def test_every_other_packet_is_left_to_the_packet_class(encoded: str) -> None:
    assert plain_event(encoded) is None


# Packets made of the parts a packet has, each sometimes wrong, and plain noise.
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)
_packets = st.one_of(
    st.builds(
        lambda kind, attachments, namespace, ack, data, tail: (
            kind + attachments + namespace + ack + data + tail
        ),
        st.sampled_from(["2", "2", "2", "3", "5", "", "x"]),
        st.sampled_from(["", "", "1-", "0-", "-"]),
        st.sampled_from(["", "", "/", "/ns,", "/yjs|ab,", "/q?x=1,", "/,", "/ns"]),
        st.sampled_from(["", "", "0", "12", "007", "1" * 16, "1" * 17, "\u0661", "1\u00b2"]),
        st.one_of(
            _JSON.map(lambda value: json.dumps(value)),
            st.lists(_JSON, max_size=3).map(lambda value: json.dumps(value)),
            st.sampled_from(['["x"', '["\\ud800"]', "[]", "[true]", '["1e999"]', "[1e999]"]),
        ),
        st.sampled_from(["", "", "]", " ", "x"]),
    ),
    st.text(max_size=30).map(lambda text: "2" + text),
)


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(_packets)
@example('2["x",1]')
@example("2[1e999]")
def test_whatever_the_plain_path_decodes_the_packet_class_decodes_the_same(
    encoded: str,
) -> None:
    decoded = plain_event(encoded)  # never raises
    if decoded is not None:
        assert general(encoded) == decoded
