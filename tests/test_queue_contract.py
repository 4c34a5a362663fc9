"""Our hand-written Celery messages must be what Celery itself would put on the queue."""

import base64
import json

import pytest
import redis
from celery import Celery

from shared.queue import PROCESS_EVENTS_TASK, celery_task_message, queue_for
from shared.settings import Settings


@pytest.fixture
def celery_message(settings: Settings) -> dict:
    """The message Celery's own producer writes for the same task, read back from Redis."""
    client = redis.Redis.from_url(settings.redis_url)
    app = Celery(broker=settings.redis_url)
    app.conf.task_ignore_result = True
    queue = "contract-check"
    app.send_task(PROCESS_EVENTS_TASK, args=[[{"id": "x"}]], queue=queue)
    raw = client.rpop(queue)
    client.delete(queue, f"_kombu.binding.{queue}")
    app.close()
    return json.loads(raw)


def test_message_has_celerys_shape(celery_message: dict) -> None:
    ours = json.loads(
        celery_task_message(
            task=PROCESS_EVENTS_TASK, queue="contract-check", args=[[{"id": "x"}]], argsrepr="x"
        )
    )
    assert ours.keys() == celery_message.keys()
    assert ours["headers"].keys() == celery_message["headers"].keys()
    assert ours["properties"].keys() == celery_message["properties"].keys()
    for key in ("content-type", "content-encoding"):
        assert ours[key] == celery_message[key]
    assert ours["headers"]["task"] == celery_message["headers"]["task"]
    assert ours["properties"]["delivery_info"] == celery_message["properties"]["delivery_info"]
    assert ours["properties"]["body_encoding"] == "base64"
    ours_body = json.loads(base64.b64decode(ours["body"]))
    theirs_body = json.loads(base64.b64decode(celery_message["body"]))
    assert ours_body == theirs_body  # [args, kwargs, embed]


def test_leads_and_activity_routing() -> None:
    assert queue_for("form_submission") == queue_for("inquiry") == "leads"
    assert queue_for("page_view") == queue_for("my_custom_type") == "activity"
