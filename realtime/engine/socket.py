"""``EngineSocket``: one Engine.IO connection whose every packet leaves through its Outbox.

python-engineio's socket gives each connection an unbounded queue, a writer task, a
task per ping and a task per message read. This one keeps python-engineio's protocol
handling (handshake, long-polling, the upgrade) and replaces the rest: packets go
into the connection's ``Outbox`` (written through, or bounded and superseded when the
peer is slow), pings are timers, and messages read from a websocket are handled in
the turn that read them when they need no waiting (pongs, Socket.IO's text events),
else by a task that exists only while some wait.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from engineio import async_socket, exceptions
from engineio import packet as eio_packet
from wsproto.frame_protocol import CloseReason

from realtime.delivery.encoding import CLOSE_PACKET, NOOP, PING, TEXT, encode_packets, ws_frame
from realtime.delivery.outbox import Outbox
from realtime.engine.websocket import CLOSE_TIMEOUT_SECONDS, WebSocketConnection

if TYPE_CHECKING:
    from realtime.engine.server import EngineServer

log = logging.getLogger(__name__)

SLOW_CONSUMER = "slow_consumer"
# Messages read ahead of the one being handled before reading pauses.
INBOX_LIMIT = 64
PROBE_REPLY = ws_frame(TEXT, b"3probe")

# Upgrade from long-polling, as the client drives it: "2probe" on the new websocket,
# answered "3probe"; then "5" (upgrade), after which everything goes over it.
_NOT_UPGRADING, _AWAIT_PROBE, _AWAIT_UPGRADE = 0, 1, 2


class EngineSocket(async_socket.AsyncSocket):  # type: ignore[misc]
    server: EngineServer

    def __init__(self, server: EngineServer, sid: str) -> None:
        # Not BaseSocket.__init__: its asyncio.Queue is what the outbox replaces.
        self.server = server
        self.sid = sid
        self.session: dict[str, Any] = {}
        self.connected = self.upgrading = self.upgraded = False
        self.closing = self.closed = False
        self.last_ping: float | None = None
        self.outbox = Outbox(
            server.outbox_limits, server.delivery_metrics, server.flusher, self._fell_behind
        )
        self.websocket: WebSocketConnection | None = None
        self._probe = _NOT_UPGRADING
        self._timer: asyncio.TimerHandle | None = None
        self._awaiting_pong = False
        self._inbox: deque[str | bytes] = deque()
        self._reader: asyncio.Task[None] | None = None

    # --- out --------------------------------------------------------------------------

    async def send(self, pkt: eio_packet.Packet) -> None:
        """A packet of python-engineio's or python-socketio's own (open, acks...)."""
        self.outbox.push(encode_packets((pkt,)))

    async def poll(self) -> list[eio_packet.Packet]:
        """What a long-polling GET returns: everything waiting, or what comes next."""
        try:
            return await self.outbox.take(self.server.ping_interval + self.server.ping_timeout)
        except (TimeoutError, RuntimeError) as exc:
            raise exceptions.QueueEmpty() from exc

    # --- pings ------------------------------------------------------------------------

    def schedule_ping(self) -> None:
        """Start pinging (the server calls it once the connection is accepted)."""
        self._stop_timer()
        self._timer = asyncio.get_running_loop().call_later(self.server.ping_interval, self._ping)

    def _ping(self) -> None:
        self._awaiting_pong = True
        self.last_ping = time.time()
        self.outbox.push(PING)
        self._timer = asyncio.get_running_loop().call_later(
            self.server.ping_timeout, self._ping_timed_out
        )

    def _pong(self) -> None:
        if self._awaiting_pong:
            self._awaiting_pong = False
            self.schedule_ping()

    def _ping_timed_out(self) -> None:
        self._timer = None
        log.info("%s: no pong, closing", self.sid)
        self.server.spawn(self.close(wait=False, reason=self.server.reason.PING_TIMEOUT))

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def check_ping_timeout(self) -> bool:
        return not self.closed  # the timers enforce it

    # --- in ---------------------------------------------------------------------------

    async def receive(self, pkt: eio_packet.Packet) -> None:
        """A packet from a long-polling POST."""
        if pkt.packet_type == eio_packet.PONG:
            self._pong()
        elif pkt.packet_type == eio_packet.MESSAGE:
            await self.server._trigger_event("message", self.sid, pkt.data, run_async=False)
        elif pkt.packet_type == eio_packet.UPGRADE:
            self.outbox.push(NOOP)
        elif pkt.packet_type == eio_packet.CLOSE:
            await self.close(wait=False, abort=True, reason=self.server.reason.CLIENT_DISCONNECT)
        else:
            raise exceptions.UnknownPacketError()

    def on_message(self, data: str | bytes) -> None:
        """A message read from the websocket (called by its protocol)."""
        if self._probe != _NOT_UPGRADING:
            self._upgrade_step(data)
            return
        if data == "3" and not self._inbox:  # a pong needs no task
            self._pong()
            return
        if self._reader is None and not self.closed and isinstance(data, str) and data[:1] == "4":
            # Nothing is being handled: an event that needs no waiting needs no task.
            try:
                if self.server.handle_now(self.sid, data[1:]):
                    return
            except Exception:
                log.exception("%s: could not handle a message", self.sid)
                return
        self._inbox.append(data)
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read())
        if len(self._inbox) > INBOX_LIMIT and self.websocket and self.websocket.transport:
            self.websocket.transport.pause_reading()

    async def _read(self) -> None:
        """Handle what was read, one message at a time, in order."""
        try:
            while self._inbox and not self.closed:
                data = self._inbox.popleft()
                if len(self._inbox) == INBOX_LIMIT // 2 and self.websocket:
                    if self.websocket.transport is not None:
                        self.websocket.transport.resume_reading()
                try:
                    await self._handle(data)
                except Exception:
                    log.exception("%s: could not handle a message", self.sid)
        finally:
            self._reader = None

    async def _handle(self, data: str | bytes) -> None:
        if isinstance(data, bytes):  # a binary attachment
            await self.server.on_message(self.sid, data)
            return
        kind = data[:1]
        if kind == "4":
            await self.server.on_message(self.sid, data[1:])
        elif kind == "3":
            self._pong()
        elif kind == "1":
            await self.close(wait=False, abort=True, reason=self.server.reason.CLIENT_DISCONNECT)
        # Anything else (a stray ping, upgrade or noop) means nothing here.

    # --- the websocket ----------------------------------------------------------------

    async def _websocket_handler(self, ws: WebSocketConnection) -> None:
        """Take over a websocket that was just handed over (the handler returns at once)."""
        if self.websocket is not None or self.closed:
            ws.close(CloseReason.POLICY_VIOLATION, "already upgraded")
            return
        self.websocket = ws
        if self.connected:  # an upgrade from long-polling
            self.upgrading = True
            self._probe = _AWAIT_PROBE
        else:
            self.connected = self.upgraded = True
            assert ws.transport is not None
            self.outbox.attach(ws.transport.write, deflate=ws.compressed)
        ws.listen(self)

    def _upgrade_step(self, data: str | bytes) -> None:
        ws = self.websocket
        assert ws is not None and ws.transport is not None
        if self._probe == _AWAIT_PROBE and data == "2probe":
            ws.transport.write(PROBE_REPLY)
            self.outbox.push(NOOP)  # ends the long-polling GET in flight
            self._probe = _AWAIT_UPGRADE
        elif self._probe == _AWAIT_UPGRADE and data == "5":
            self._probe = _NOT_UPGRADING
            self.upgrading = False
            self.upgraded = True
            self.outbox.attach(ws.transport.write, deflate=ws.compressed)
        else:
            log.info("%s: failed websocket upgrade (%r)", self.sid, data[:16])
            self._give_up_upgrade()
            ws.close(CloseReason.PROTOCOL_ERROR, "bad upgrade")

    def _give_up_upgrade(self) -> None:
        self.websocket = None
        self.upgrading = False
        self._probe = _NOT_UPGRADING

    def pause_writing(self) -> None:
        if self.upgraded:
            self.outbox.pause()

    def resume_writing(self) -> None:
        if self.upgraded:
            self.outbox.resume()

    def on_closing(self, ws: WebSocketConnection) -> None:
        """``ws`` is sending its close frame: nothing is written to it from now on."""
        if ws is self.websocket and self.upgraded:
            self.outbox.detach()

    def on_closed(self, ws: WebSocketConnection) -> None:
        """The TCP connection of ``ws`` is gone."""
        if ws is not self.websocket:  # a probe given up on earlier
            return
        if not self.upgraded:  # a probe that never completed: long-polling goes on
            self._give_up_upgrade()
            return
        self.outbox.detach()
        self._stop_timer()
        self.server.sockets.pop(self.sid, None)
        if not self.closing:
            reason = self.server.reason.TRANSPORT_CLOSE
            self.server.spawn(self.close(wait=False, abort=True, reason=reason))

    # --- closing ----------------------------------------------------------------------

    def _fell_behind(self) -> None:
        """The outbox passed its bound (it dropped its backlog): say why, then close."""
        log.info("%s: closing a slow consumer", self.sid)
        self.outbox.last_words([*self.server.farewell(self.sid, SLOW_CONSUMER), CLOSE_PACKET])
        if self.websocket is not None and self.upgraded:
            self.websocket.close(CloseReason.POLICY_VIOLATION, SLOW_CONSUMER)
        self.server.spawn(self.close(wait=False, abort=True, reason=SLOW_CONSUMER))

    async def close(
        self, wait: bool = True, abort: bool = False, reason: str | None = None
    ) -> None:
        """End the connection: the application hears it first, then the client gets a
        close packet (unless ``abort``: it is gone, or was told already)."""
        if self.closed or self.closing:
            return
        self.closing = True
        self._stop_timer()
        await self.server._trigger_event(
            "disconnect", self.sid, reason or self.server.reason.SERVER_DISCONNECT, run_async=False
        )
        if not abort:
            self.outbox.push(CLOSE_PACKET)
        self.outbox.close()
        self.closed = True
        if self.websocket is not None and self.upgraded:
            # A websocket is closed once what waits has been written to it.
            self.server.sockets.pop(self.sid, None)
            ending = self.server.spawn(self._close_websocket(self.websocket))
            if wait:
                await asyncio.shield(ending)
        else:
            # Long-polling: the client's next GET collects the close packet; then (or
            # if it never comes) nothing refers to this socket any more.
            forgotten = self.server.spawn(self._forget_when_drained())
            if wait and not abort:
                await asyncio.shield(forgotten)
        if self.websocket is not None and not self.upgraded:
            self.websocket.close()

    async def _forget_when_drained(self) -> None:
        try:
            async with asyncio.timeout(self.server.ping_timeout):
                await self.outbox.drained()
        except TimeoutError:
            pass
        if self.server.sockets.get(self.sid) is self:
            del self.server.sockets[self.sid]

    async def _close_websocket(self, ws: WebSocketConnection) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await self.outbox.drained()
        except TimeoutError:
            pass
        ws.close()
