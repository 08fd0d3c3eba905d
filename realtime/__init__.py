"""Socket.IO: namespaces, handlers, delivery and cluster glue."""
