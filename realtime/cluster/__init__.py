"""Many nodes: room events carried between server processes over Redis.

``RedisLink`` (link.py) is ``Delivery``'s relay when ``REDIS_URL`` is set: every room
event handed to ``Delivery.to_room`` on one node is published once, already turned
into bytes (codec.py), on the room's channel, and every node with members in that room
hands it to its own members through the same delivery layer. Without Redis nothing
here runs: one process delivers alone.

Documents (documents.py, ``DocumentLog``) are the exception: a Yjs update is not a
room event between nodes but a log row, published by the node that stored it on the
document's own channel to every node holding a copy (whether or not it has Yjs
clients), which applies it and hands it to its own clients. ``DocumentLog`` also holds
the lease that lets one node at a time snapshot a document.
"""

from realtime.cluster.link import ClusterMetrics, RedisLink

__all__ = ["ClusterMetrics", "RedisLink"]
