"""python-socketio's client manager, reduced to the registry of namespace connections.

python-socketio's rooms and its emit (a task per recipient) are not used here: rooms
and sending belong to ``Delivery``, and asking this manager for them is an error.
What it keeps is python-socketio's record of which Socket.IO connection (sid, per
namespace) rides which Engine.IO connection; registering one registers its delivery
``Endpoint``. Every operation costs the same however many connections and
namespaces the server has: python-socketio's own disconnect scanned them all.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, KeysView
from typing import Any, NoReturn

import socketio

from realtime.delivery.delivery import Delivery
from realtime.delivery.rooms import Endpoint

log = logging.getLogger(__name__)


class DeliveryManager(socketio.AsyncManager):  # type: ignore[misc]
    def __init__(self, delivery: Delivery) -> None:
        super().__init__()
        self.delivery = delivery
        self._sids: dict[str, dict[str, str]] = {}  # namespace -> {sid: eio_sid}
        self._by_eio: dict[str, dict[str, str]] = {}  # eio_sid -> {namespace: sid}
        self._connecting: set[str] = set()
        self._disconnecting: set[str] = set()
        # Told of an Engine.IO connection whose last namespace just left (whoever
        # ended it: the client, the server, a refused connect).
        self.on_idle: Callable[[str], None] = lambda eio_sid: None

    def namespaces_of(self, eio_sid: str) -> list[str]:
        """The namespaces an Engine.IO connection is connected (or connecting) to."""
        return list(self._by_eio.get(eio_sid, ()))

    # --- the registry ---------------------------------------------------------------

    def get_namespaces(self) -> KeysView[str]:
        return self._sids.keys()

    async def pre_connect(self, eio_sid: str, namespace: str) -> str | None:
        socket = self.server.eio.sockets.get(eio_sid)
        if socket is None or namespace in self._by_eio.get(eio_sid, ()):
            return None  # the connection is gone, or already connected to it
        sid: str = self.server.eio.generate_id()
        self._sids.setdefault(namespace, {})[sid] = eio_sid
        self._by_eio.setdefault(eio_sid, {})[namespace] = sid
        self._connecting.add(sid)
        self.delivery.add(Endpoint(sid, namespace, socket.outbox))
        return sid

    async def connect(self, sid: str, namespace: str) -> str:
        self._connecting.discard(sid)
        eio_sid = self.eio_sid_from_sid(sid, namespace)
        socket = self.server.eio.sockets.get(eio_sid)
        if eio_sid is not None and (socket is None or socket.closed):
            # The transport went away while the connect handler ran: its disconnect
            # passed this namespace by (it was still connecting), so it runs now, and
            # the application forgets what the handler set up.
            await self.server._handle_disconnect(
                eio_sid, namespace, self.server.reason.TRANSPORT_CLOSE
            )
        return sid

    def is_pre_connected(self, sid: str, namespace: str) -> bool:
        return sid in self._connecting

    def is_connected(self, sid: str | None, namespace: str) -> bool:
        if sid is None or sid in self._connecting or sid in self._disconnecting:
            return False
        return sid in self._sids.get(namespace, ())

    async def can_disconnect(self, sid: str, namespace: str) -> bool:
        return self.is_connected(sid, namespace)

    def sid_from_eio_sid(self, eio_sid: str, namespace: str) -> str | None:
        return self._by_eio.get(eio_sid, {}).get(namespace)

    def eio_sid_from_sid(self, sid: str, namespace: str) -> str | None:
        return self._sids.get(namespace, {}).get(sid)

    def pre_disconnect(self, sid: str, namespace: str) -> str | None:
        self._disconnecting.add(sid)
        return self.eio_sid_from_sid(sid, namespace)

    async def disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        self.basic_disconnect(sid, namespace)

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        sids = self._sids.get(namespace)
        eio_sid = sids.pop(sid, None) if sids is not None else None
        if sids is not None and not sids:
            del self._sids[namespace]
        if eio_sid is not None:
            namespaces = self._by_eio.get(eio_sid)
            if namespaces is not None:
                namespaces.pop(namespace, None)
                if not namespaces:
                    del self._by_eio[eio_sid]
                    self.on_idle(eio_sid)
        self.delivery.remove(sid)
        self._connecting.discard(sid)
        self._disconnecting.discard(sid)

    # --- acks -----------------------------------------------------------------------

    async def trigger_callback(self, sid: str, id: int, data: list[Any]) -> None:
        """A client's answer to an event sent with ``Delivery.to_connection(callback=...)``."""
        endpoint = self.delivery.endpoint(sid)
        callback = endpoint.take_ack(id) if endpoint is not None else None
        if callback is None:
            log.info("an answer to no question (ack %s), ignored", id)
            return
        result = callback(*data)
        if inspect.isawaitable(result):
            await result

    # --- not here -------------------------------------------------------------------

    async def emit(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError("send through realtime.delivery.Delivery")

    async def enter_room(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError("rooms live in realtime.delivery.Delivery")

    async def leave_room(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError("rooms live in realtime.delivery.Delivery")

    async def close_room(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError("rooms live in realtime.delivery.Delivery")

    def get_rooms(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError("rooms live in realtime.delivery.Delivery")
