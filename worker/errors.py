"""Failure classes the task decorator acts on."""


class TransientError(Exception):
    """Worth retrying later: the database or Redis is unreachable or contended."""
