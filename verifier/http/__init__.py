"""The HTTP API (FastAPI): app factory, guards, routes."""
