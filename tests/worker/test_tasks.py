"""The task's retries: what their messages show of the events (Flower shows it)."""

import base64
import threading
import uuid
from pathlib import Path

import orjson
import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.messages import envelope, message, push, wait_outcomes
from tests.support.processes import start_worker, stop
from tests.support.redis_dbs import PIPELINE_OWN_WORKER, redis_url_with_db
from tests.support.tenants import Tenant


def _record_pushes(url: str, into: list[str], until: str) -> threading.Thread:
    """Record every message LPUSHed to the leads queue on this Redis (MONITOR), until a client
    sends ECHO `until`."""
    client = redis.Redis.from_url(url, socket_timeout=None)  # redis-py would give up in 5 s

    def record() -> None:
        with client.monitor() as monitor:
            while True:
                command = monitor.next_command()["command"]
                if command == f"ECHO {until}":
                    return
                if command.startswith("LPUSH leads "):
                    into.append(command.removeprefix("LPUSH leads "))

    thread = threading.Thread(target=record, daemon=True)
    thread.start()
    return thread


async def test_a_retried_message_shows_a_count_of_envelopes_never_their_content(
    service_env: dict[str, str], engine: AsyncEngine, tenant: Tenant, tmp_path: Path
) -> None:
    marker = f"retried_{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        await conn.execute(
            text(f"""
            CREATE FUNCTION {marker}() RETURNS trigger AS $$
            BEGIN
              IF NEW.message = '{marker}' THEN
                RAISE EXCEPTION 'lock not available (test)' USING ERRCODE = '55P03';
              END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql""")
        )
        await conn.execute(
            text(
                f"CREATE TRIGGER {marker} BEFORE INSERT ON events "
                f"FOR EACH ROW EXECUTE FUNCTION {marker}()"
            )
        )
    own_redis = redis_url_with_db(service_env["LEADSTREAM_REDIS_URL"], PIPELINE_OWN_WORKER)
    broker = redis.Redis.from_url(own_redis)
    broker.flushdb()
    pushed: list[str] = []
    done = f"done-{marker}"
    recorder = _record_pushes(own_redis, pushed, until=done)
    env = {**service_env, "LEADSTREAM_REDIS_URL": own_redis, "LEADSTREAM_TASK_MAX_RETRIES": "2"}
    worker = start_worker(env, tmp_path / "worker.log", concurrency=1)
    try:
        e = envelope(
            tenant.id,
            {"type": "inquiry", "person": {"emails": ["private@example.com"]}, "message": marker},
        )
        push(broker, ("leads", message([e])), markers=[e])
        await wait_outcomes(broker, [e.id], timeout=60)
    finally:
        broker.echo(done)
        recorder.join(timeout=10)
        stop(worker.process)
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TRIGGER {marker} ON events"))
            await conn.execute(text(f"DROP FUNCTION {marker}()"))
        broker.flushdb()
    retries = []
    for raw in pushed:
        sent = orjson.loads(raw)
        if sent["headers"]["retries"] > 0:
            retries.append(sent)
    assert len(retries) == 2, pushed
    for sent in retries:
        assert sent["headers"]["argsrepr"] == "[<1 envelopes>]"
        assert sent["headers"]["kwargsrepr"] == "{}"
        # The events themselves are still in the body, for the worker.
        assert b"private@example.com" in base64.b64decode(sent["body"])
