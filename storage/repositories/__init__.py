"""Repositories: queries as functions over an ``AsyncSession``; the caller commits."""
