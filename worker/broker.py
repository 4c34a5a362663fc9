"""kombu's Redis transport, with two upstream behaviours (kombu 5.7) worked around.

When Redis goes away while a worker holds messages, kombu tears the connection down and then
tries to restore or ack those messages through it: `_connparams` dereferences the now-None
`connection.client` and the AttributeError kills the worker ("Unrecoverable error"). Raising
a connection error instead lets kombu's own handling take over (it ignores or logs connection
errors there, and Celery reconnects); the messages stay in Redis' unacked set and come back
after the visibility timeout, where the idempotent task makes the redelivery a no-op.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client is None and self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection is already closed")
        with super().conn_or_acquire(client) as acquired:
            yield acquired


class Transport(kombu_redis.Transport):
    Channel = Channel
    # A Redis over maxmemory refuses writes (and the transactions holding one): kombu counts
    # that as a channel error, which Celery finds unrecoverable and the worker exits. Treat it
    # as a lost connection instead: Celery reconnects, and a message whose ack or requeue was
    # refused stays unacked until the visibility timeout brings it back.
    connection_errors = (
        *kombu_redis.Transport.connection_errors,
        redis.exceptions.OutOfMemoryError,
        redis.exceptions.ExecAbortError,
    )


def install() -> None:
    """Use this transport for redis:// URLs in this process.

    As an alias rather than Celery's `broker_transport`, so the broker URL keeps its `redis://`
    scheme: Flower picks its broker client (the Broker tab, queue depths) by that scheme.
    """
    for scheme in ("redis", "rediss"):
        TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
