"""The Celery side: the app and its configuration, thin tasks, and matching (the domain logic)."""
