"""Storage-level outcomes the services translate into client errors."""

from __future__ import annotations


class StorageError(Exception):
    """Base of the errors raised by repositories."""


class AlreadyExists(StorageError):
    """A unique key is taken (the database's IntegrityError, translated)."""
