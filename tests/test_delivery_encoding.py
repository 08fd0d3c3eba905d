"""Events and acks encoded directly (realtime/delivery/encoding.py) are the bytes
python-socketio's own packets encode to; a payload with bytes is a binary event."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import pytest
from socketio import packet as sio_packet

from realtime.delivery.encoding import TEXT, Encoded, encode_ack, encode_event, encode_socketio
from realtime.server import _OrjsonModule

PAYLOADS: list[Any] = [
    None,
    {},
    {"document_id": str(uuid.uuid4()), "message": {"seq": 7, "text": 'quote " and \\ é ✓'}},
    {"at": datetime.datetime(2026, 12, 5, tzinfo=datetime.UTC), "id": uuid.uuid4()},
    [1, 2.5, None, True, "x" * 200],
    "a string",
]


@pytest.fixture(autouse=True)
def _orjson_packets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sio_packet.Packet, "json", _OrjsonModule)


def _library(kind: int, namespace: str, data: Any, ack_id: int | None) -> Encoded:
    return encode_socketio(
        sio_packet.Packet(kind, data=data, namespace=namespace, id=ack_id, binary=False)
    )


def _same(ours: Encoded, theirs: Encoded) -> None:
    assert ours.frames == theirs.frames
    assert [p.encode() for p in ours.packets] == [p.encode() for p in theirs.packets]


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("namespace", ["/", "/yjs|0b6f"])
@pytest.mark.parametrize("ack_id", [None, 0, 12345])
def test_an_event_is_encoded_as_python_socketio_encodes_it(
    payload: Any, namespace: str, ack_id: int | None
) -> None:
    arguments = ["chat:message"] if payload is None else ["chat:message", payload]
    ours = encode_event(namespace, "chat:message", payload, ack_id)
    _same(ours, _library(sio_packet.EVENT, namespace, arguments, ack_id))
    assert ours.frames[0] & 0x0F == TEXT


@pytest.mark.parametrize("payload", PAYLOADS)
def test_an_ack_is_encoded_as_python_socketio_encodes_it(payload: Any) -> None:
    arguments = [] if payload is None else [payload]
    _same(encode_ack("/", 3, arguments), _library(sio_packet.ACK, "/", arguments, 3))


def test_bytes_make_a_binary_event_with_an_attachment() -> None:
    encoded = encode_event("/yjs|0b6f", "sync-update", b"\x00\x01")
    assert [p.encode() for p in encoded.packets] == [
        '451-/yjs|0b6f,["sync-update",{"_placeholder":true,"num":0}]',
        b"\x00\x01",
    ]
