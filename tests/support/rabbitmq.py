"""The RabbitMQ the broker tests use, when this machine has one."""

import os
import socket

import kombu

RABBITMQ_URL = os.environ.get("LEADSTREAM_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


def rabbitmq_answers() -> bool:
    url = kombu.Connection(RABBITMQ_URL)
    try:
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 5672), timeout=1):
            return True
    except OSError:
        return False
