"""A Python client for roomserver, for desktop apps, tests and benchmarks.

Built on python-socketio's ``AsyncClient``::

    async with RoomClient("http://127.0.0.1:8080", token) as client:
        room = await client.join(document_id)
        await client.send(document_id, "hello")
        print([m["text"] for m in client.room(document_id).messages])

``DocumentClient`` keeps a Yjs document (pycrdt) in sync over the y-socket.io protocol.
"""

from roomclient.client import CommandError, ReplyView, RoomClient, RoomView
from roomclient.yjs import DocumentClient

__all__ = ["CommandError", "DocumentClient", "ReplyView", "RoomClient", "RoomView"]
