"""Front doors: one adapter per way events arrive (the partner API today; later a pixel, a
beacon, webhooks, SDK protocols).

An adapter authenticates its own kind of key, reads its own wire format within its own limits,
maps what it read onto `EventIn`, and hands each event to the one enqueue path
(`ingest_api.intake`), which builds the envelope, queues it and answers. Nothing past that path
knows which door an event came through (STYLE.md §12). The partner API's door is
`ingest_api.intake` itself.
"""
