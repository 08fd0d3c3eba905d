"""One module per Socket.IO namespace."""
