"""kombu's Redis transport, with upstream behaviours (kombu 5.7) worked around.

When Redis goes away while a worker holds messages, kombu tears the connection down and then
tries to restore or ack those messages through it: `_connparams` dereferences the now-None
`connection.client` and the AttributeError kills the worker ("Unrecoverable error"). Raising
a connection error instead lets kombu's own handling take over (it ignores or logs connection
errors there, and Celery reconnects); the messages stay in Redis' unacked set and come back
after the visibility timeout, where the idempotent task makes the redelivery a no-op.

kombu takes a message with BRPOP and records it in `unacked` in a later round trip: a message
popped just before Redis died (or whose BRPOP reply was still on the wire) was in neither the
queue nor `unacked`, only in the worker's memory, and was lost. Here one Lua call
(`take_message.lua`) takes the message and records it. A script cannot block as BRPOP does, so
a channel that found every queue empty takes again `idle_poll_interval` later.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from queue import Empty
from time import monotonic, sleep, time
from typing import Any

import redis
from kombu.transport import TRANSPORT_ALIASES, virtual
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

_TAKE_SCRIPT = files("worker").joinpath("take_message.lua").read_text()


class QoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        if self.channel.claim_recorded(delivery_tag):
            # Already in `unacked`, recorded as it left the queue: only track it here.
            virtual.QoS.append(self, message, delivery_tag)
        else:
            kombu_redis.QoS.append(self, message, delivery_tag)


class Channel(kombu_redis.Channel):
    QoS = QoS
    # How soon a channel whose queues were all empty looks again: the most an idle worker adds
    # to a message's wait, and the rate of its empty takes.
    idle_poll_interval = 0.02

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Delivery tags take_message.lua recorded, until the consumer's QoS claims them.
        self._recorded: set[str] = set()
        self._idle_until = 0.0
        kombu_redis.Channel.__init__(self, *args, **kwargs)

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client is None and self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection is already closed")
        with super().conn_or_acquire(client) as acquired:
            yield acquired

    def claim_recorded(self, delivery_tag: str) -> bool:
        """Whether this delivery was recorded in `unacked` when taken (once per delivery)."""
        if delivery_tag in self._recorded:
            self._recorded.remove(delivery_tag)
            return True
        return False

    # kombu's poller sends `_brpop_start` when the channel may consume (prefetch credit) and
    # calls `_brpop_read` when the reply is readable; the two keep those names here.
    def _brpop_start(self, timeout: float | None = None) -> None:
        if not self.ack_emulation:
            kombu_redis.Channel._brpop_start(self, timeout)
            return
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        idle = self._idle_until - monotonic()
        if idle > 0:
            if self.connection.event_loop is not None:
                return  # the timer `_brpop_read` set ends the wait
            sleep(idle)  # drain_events() blocks its caller anyway
        prefix = self.global_keyprefix
        # The lists kombu's BRPOP names, in its order: each priority step's queues in turn.
        lists = [(q, pri) for pri in self.priority_steps for q in queues]
        keys = [prefix + kombu_redis.Channel._q_for_pri(self, q, pri) for q, pri in lists]
        keys += [prefix + self.unacked_key, prefix + self.unacked_index_key]
        connection = self.client.connection
        self._in_poll = connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]  # kombu's default: None
        connection.send_command("EVAL", _TAKE_SCRIPT, len(keys), *keys, time())

    def _brpop_read(self, **options: Any) -> bool:
        if not self.ack_emulation:
            return bool(kombu_redis.Channel._brpop_read(self, **options))
        try:
            try:
                taken = self.client.parse_response(self.client.connection, "EVAL", **options)
            except self.connection_errors:
                # As kombu's BRPOP: the next poll reconnects.
                self.client.connection.disconnect()
                raise
            if not taken:
                self._idle_until = monotonic() + self.idle_poll_interval
                loop = self.connection.event_loop
                if loop is not None:
                    # Nothing is pending for Celery's event loop to wake on: a timer ends the
                    # wait, and the loop's next tick takes again.
                    loop.call_later(self.idle_poll_interval, self._end_idle)
                raise Empty()
            self._idle_until = 0.0
            list_key, item, recorded = taken
            return self._deliver_taken(list_key, item, recorded=bool(recorded))
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu's default: False
            kombu_redis.Channel._flush_brpop_reauth(self)

    def _end_idle(self) -> None:
        self._idle_until = 0.0

    def _deliver_taken(self, list_key: bytes, item: bytes, *, recorded: bool) -> bool:
        queue = bytes_to_str(list_key)[len(self.global_keyprefix) :].rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(queue)
        payload = loads(bytes_to_str(item))
        if not recorded:
            self.connection._deliver(payload, queue)
            return True
        tag = payload["properties"]["delivery_tag"]
        self._recorded.add(tag)
        try:
            self.connection._deliver(payload, queue)
        finally:
            unclaimed = self.claim_recorded(tag)
        if unclaimed:
            # Delivered without QoS.append: a no_ack consumer (Celery's control replies), so
            # nobody will ack it, and the visibility timeout must not bring it back.
            self.qos._remove_from_indices(tag).execute()
        return True


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
    # Celery's event loop (kombu's Hub), once registered; None while drained synchronously.
    event_loop: Any = None

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        kombu_redis.Transport.register_with_event_loop(self, connection, loop)
        self.event_loop = loop


def install() -> None:
    """Use this transport for redis:// URLs in this process.

    As an alias rather than Celery's `broker_transport`, so the broker URL keeps its `redis://`
    scheme: Flower picks its broker client (the Broker tab, queue depths) by that scheme.
    """
    for scheme in ("redis", "rediss"):
        TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
