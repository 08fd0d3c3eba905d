"""Persistence: SQLAlchemy models and repositories, Redis and vector adapters.

Takes plain values (URLs, sessions), never the application's settings object.
"""
