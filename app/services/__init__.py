"""Application services: each method is one unit of work in one transaction."""
