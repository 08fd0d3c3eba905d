"""REST routes under /api/v1, thin: parse, call one service, shape the answer."""
