"""What the browser doors (pixel, beacon) share: the request's own facts filled into the event,
the site's IP policy, CORS headers.

IP policy (per site, `leadstream site create --ip-policy`): `keep` stores the address as is;
`truncate` (the default) zeroes an IPv4 address's last octet (203.0.113.7 → 203.0.113.0) and
keeps an IPv6 address's first 48 bits (its routing prefix: 2001:db8:1:2::7 → 2001:db8:1::),
enough for a region, not a household; `drop` stores none. The policy applies to whatever address
the event would store, sent or seen.
"""

import functools
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from urllib.parse import unquote_plus

from ingest_api.asgi import Scope
from shared.contract.events import EventIn
from shared.db.sites import IpPolicy, Site

UA_LIMIT = 1024  # EventIn.user_agent's own limit
URL_LIMIT = 2048  # EventIn's Url limit

Address = IPv4Address | IPv6Address
_IPV4_KEPT = (2**32 - 1) ^ (2**8 - 1)  # /24
_IPV6_KEPT = (2**128 - 1) ^ (2**80 - 1)  # /48


def apply_ip_policy(address: Address | None, policy: IpPolicy) -> Address | None:
    """The address as the site's policy lets it be stored."""
    if address is None or policy == "drop":
        return None
    if policy == "keep":
        return address
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    # Masked as integers: ip_network() parses a string, ten times the cost, on every request.
    if isinstance(address, IPv4Address):
        return IPv4Address(int(address) & _IPV4_KEPT)
    return IPv6Address(int(address) & _IPV6_KEPT)


def query_params(query: bytes, max_params: int) -> dict[str, str] | None:
    """The query's parameters (the last of a repeated name wins); None beyond `max_params`.

    parse_qsl's result, at a fraction of its cost: only what is escaped is unescaped.
    """
    parts = query.decode("latin-1").split("&")
    if len(parts) > max_params:
        return None
    params: dict[str, str] = {}
    for part in parts:
        if not part:
            continue
        name, _, value = part.partition("=")
        if "%" in part or "+" in part:
            name = unquote_plus(name, errors="replace")
            value = unquote_plus(value, errors="replace")
        if value:  # blank values are absent, as parse_qsl leaves them
            params[name] = value
    return params


@functools.lru_cache(maxsize=4096)
def _address(host: str) -> Address | None:
    # Parsing costs more than the rest of the request's facts; clients send many requests.
    try:
        return ip_address(host)
    except ValueError:  # a Unix socket's peer, or a test client's name
        return None


@dataclass(frozen=True)
class RequestFacts:
    """What the request itself says about the sender, from the connection and its headers."""

    client: Address | None
    user_agent: str | None
    referer: str | None

    @classmethod
    def of(cls, scope: Scope, headers: dict[bytes, bytes]) -> "RequestFacts":
        # scope["client"] is the peer, or (behind a proxy uvicorn trusts, --forwarded-allow-ips)
        # the address the proxy forwarded.
        client = scope.get("client")
        address = _address(client[0]) if client else None
        agent = headers.get(b"user-agent")
        referer = headers.get(b"referer")
        return cls(
            address,
            agent.decode("latin-1")[:UA_LIMIT] if agent else None,
            _web_url(referer.decode("latin-1")) if referer else None,
        )


def _web_url(value: str) -> str | None:
    """`value` if EventIn would take it as a URL (an http(s) address within its limit)."""
    scheme, sep, _ = value.partition(":")
    if sep and scheme.lower() in {"http", "https"} and len(value) <= URL_LIMIT:
        return value
    return None


def completion(event: EventIn, site: Site, facts: RequestFacts) -> dict[str, str | None]:
    """What the request adds to the event's payload (wire names; None: remove), and the site's
    IP policy: applied to the payload, not to a copy of the event, which costs more than the
    rest of a pixel request's own work."""
    address = apply_ip_policy(event.ip_address or facts.client, site.ip_policy)
    extra: dict[str, str | None] = {"ipAddress": str(address) if address is not None else None}
    if event.user_agent is None and facts.user_agent is not None:
        extra["userAgent"] = facts.user_agent
    if event.page_url is None and facts.referer is not None:
        extra["pageUrl"] = facts.referer
    # Every value was validated by EventIn's own rules or fits them (the limits above).
    return extra


def cors_headers(origin: bytes) -> dict[str, str]:
    """For a request from an origin the site allows: that origin may read the answer."""
    return {"Access-Control-Allow-Origin": origin.decode("latin-1"), "Vary": "Origin"}
