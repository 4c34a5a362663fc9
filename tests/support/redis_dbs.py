"""The Redis db numbers the tests use, all derived from one base: LEADSTREAM_TEST_REDIS_DB.

A test run claims the dbs base-3 .. base (mod 16), so runs on one machine whose bases are at
least 4 apart (say 15, 11, 7) never flush or consume each other's keys. base-1 is left
unused: with the default base 15 that is db 14, the full bench's (`bench.run`), which may run
beside the suite.
"""

import os

BASE = int(os.environ.get("LEADSTREAM_TEST_REDIS_DB", "15"))


def _below(offset: int) -> int:
    return (BASE - offset) % 16


SESSION = BASE  # the session's worker, API and outcome store
BENCH_SMOKE = _below(2)  # the tiny bench run
PIPELINE_OWN_WORKER = _below(3)  # a worker of one test's own; or an in-process API's queues
ALL = (SESSION, BENCH_SMOKE, PIPELINE_OWN_WORKER)  # flushed when the run ends


def redis_url_with_db(url: str, db: int) -> str:
    """`url` (redis://host:port/N) pointing at db `db` instead."""
    return f"{url.rsplit('/', 1)[0]}/{db}"
