"""The ASGI ingest API: validates, authenticates and queues events; never writes PostgreSQL."""
