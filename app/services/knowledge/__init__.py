"""The knowledge base: entries in the database, their passages (and the room documents')
in a vector index, and search over what the asker may read."""
