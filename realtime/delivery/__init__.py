"""Delivery: the one way out for every server-to-client event.

``Delivery`` takes a target (a room, a connection) and an ``Event`` (name, payload,
``EventClass``, key), encodes it once (encoding.py) and hands it to each recipient's
``Outbox`` (outbox.py): written through at once while the client keeps up, bounded
and superseded per event class while it does not, closed as a slow consumer beyond
the bound. Room membership is recorded once, in ``Rooms`` (rooms.py).
"""

from realtime.delivery.delivery import Delivery
from realtime.delivery.events import Event
from realtime.delivery.outbox import Limits, Outbox

__all__ = ["Delivery", "Event", "Limits", "Outbox"]
