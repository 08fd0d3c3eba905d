"""The Engine.IO transport: python-engineio's protocol, with every connection's output
through its delivery ``Outbox`` and websockets taken over from aiohttp after the
handshake (no task, no queue, no aiohttp request held per connection)."""
