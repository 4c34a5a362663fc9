"""Flower, as `make run` starts it: behind basic auth, and its Broker tab shows both queues and
their depth."""

import re
import time
from pathlib import Path

import httpx

from ops.processes import flower_argv, free_port, listening, start, stop, wait_until
from tests.support.processes import WorkerProcess

LOGIN = ("operator", "a-password-of-24-chars!!")


def test_the_broker_tab_asks_for_a_login_then_lists_leads_and_activity(
    service_env: dict[str, str], worker: WorkerProcess, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "flower.log"
    env = {**service_env, "LEADSTREAM_FLOWER_BASIC_AUTH": ":".join(LOGIN)}
    flower = start(flower_argv(port=port), env=env, log=log)
    try:
        wait_until(listening(port), flower, log, timeout=60, what="flower")
        url = f"http://127.0.0.1:{port}/broker"
        assert httpx.get(url, timeout=10).status_code == 401
        wrong = (LOGIN[0], "wrong-password-wrong!!")
        assert httpx.get(url, auth=wrong, timeout=10).status_code == 401
        deadline = time.monotonic() + 60
        while True:  # Flower learns the workers' queues by inspecting them, a few seconds in
            page = httpx.get(url, auth=LOGIN, timeout=10)
            rows = re.findall(r"<td>(leads|activity)</td>\s*<td[^>]*>(\d+)</td>", page.text)
            if page.status_code != 200 or len(rows) < 2:
                assert time.monotonic() < deadline, (page.status_code, page.text[-2000:])
                time.sleep(0.5)
                continue
            break
        assert {name for name, _ in rows} == {"leads", "activity"}
    finally:
        stop(flower)
