"""Which User-Agents are bots: known crawlers and headless browsers, by the upstream list."""

import functools

import crawleruseragents

# A User-Agent costs ~250 µs to match against the list, and a site's traffic repeats a few
# thousand of them: cached, bounded so that random ones cannot grow the worker's memory.
_CACHED_AGENTS = 4096


@functools.lru_cache(maxsize=_CACHED_AGENTS)
def _is_crawler(user_agent: str) -> bool:
    return bool(crawleruseragents.is_crawler(user_agent))


def is_bot(user_agent: str | None) -> bool:
    """True for a known crawler's or headless browser's User-Agent; an event without one is not."""
    return user_agent is not None and _is_crawler(user_agent)
