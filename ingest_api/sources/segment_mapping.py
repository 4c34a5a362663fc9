"""How a Segment / RudderStack message becomes an `EventIn` (wire names): pure rules, no I/O.

`map_message` never raises: a message it cannot map is a reason (a string), and a value that
would not fit its typed field (a `javascript:` URL, an unparseable time, an invalid IP) is left
out, or kept in the metadata, rather than failing the event. What EventIn still refuses (no
identity, a malformed e-mail) is rejected by the door's validation, event by event.
"""

import re
from datetime import UTC, datetime
from ipaddress import ip_address
from typing import Any

import orjson

from ingest_api.sources.browser import Address, apply_ip_policy
from shared.contract.events import EARLIEST, LATEST, PLACEHOLDER_IDS, metadata_problem
from shared.db.sites import IpPolicy

TYPE_LIMIT = 64
TITLE_LIMIT = 1024
UA_LIMIT = 1024
URL_LIMIT = 2048
NAME_LIMIT = 255
VISITOR_LIMIT = 128
# Room left for the typed fields within an event's 32 KB: metadata beyond it loses its largest
# entries first.
METADATA_BUDGET = 24 * 1024

# Segment's spec names (and common variants) for the events our timelines know.
TRACK_TYPES = {
    "viewed property": "property_view",
    "property viewed": "property_view",
    "product viewed": "property_view",
    "property search": "search",
    "searched properties": "search",
    "products searched": "search",
    "form submitted": "form_submission",
    "form submission": "form_submission",
    "saved property": "saved_property",
    "property saved": "saved_property",
    "inquiry sent": "inquiry",
    "appointment scheduled": "appointment_scheduled",
}
MESSAGE_TYPES = {
    "page": "page_view",
    "screen": "screen_view",
    "identify": "identify",
    "group": "group",
    "alias": "alias",
}
# Fields each mapped onto EventIn's own: not repeated in the metadata.
_MAPPED = {"type", "anonymousId", "userId", "timestamp", "sentAt", "writeKey", "previousId"}
_CONTEXT_MAPPED = {"ip", "userAgent"}
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NOT_WORD = re.compile(r"[^a-z0-9]+")


def snake_case(name: str) -> str:
    """`"Viewed Property"` → `"viewed_property"`, `"formSubmitted"` → `"form_submitted"`."""
    return _NOT_WORD.sub("_", _CAMEL.sub("_", name).lower()).strip("_")[:TYPE_LIMIT].rstrip("_")


def event_type(kind: str, name: Any) -> str | None:
    """The EventIn type of a message of `kind` (a track's by its `event` name)."""
    if kind != "track":
        return MESSAGE_TYPES.get(kind)
    if not isinstance(name, str):
        return None
    return TRACK_TYPES.get(" ".join(name.lower().split())) or snake_case(name) or None


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time within EventIn's range (naive means UTC); None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed if EARLIEST <= parsed < LATEST else None


def _id(value: Any, limit: int) -> str | None:
    # Apps send numeric ids too; placeholders are dropped so another id can still identify.
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or len(text) > limit or text.lower() in PLACEHOLDER_IDS:
        return None
    return text


def _text(value: Any, limit: int) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return value[:limit]


def _url(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) > URL_LIMIT:
        return None
    scheme, sep, _ = value.partition(":")
    return value if sep and scheme.lower() in {"http", "https"} else None


def _ip(value: Any, policy: IpPolicy) -> str | None:
    address: Address | None
    try:
        address = ip_address(value) if isinstance(value, str) else None
    except ValueError:
        return None
    kept = apply_ip_policy(address, policy)
    return str(kept) if kept is not None and len(str(kept)) <= 64 else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def person(user_id: str | None, traits: dict[str, Any]) -> dict[str, Any] | None:
    """The person a message names: its userId as externalId, its traits' contact points."""
    found: dict[str, Any] = {}
    if user_id is not None:
        found["externalId"] = user_id
    if isinstance(email := traits.get("email"), str) and email.strip():
        found["emails"] = [email]
    if isinstance(phone := traits.get("phone"), str) and phone.strip():
        found["phones"] = [phone]
    first = traits.get("firstName", traits.get("first_name"))
    last = traits.get("lastName", traits.get("last_name"))
    if first is None and last is None and isinstance(name := traits.get("name"), str):
        first, _, last = name.strip().partition(" ")
    if first_name := _text(first, NAME_LIMIT):
        found["firstName"] = first_name.strip()
    if last_name := _text(last, NAME_LIMIT):
        found["lastName"] = last_name.strip()
    return found or None


def metadata(message: dict[str, Any]) -> dict[str, Any] | None:
    """What the typed fields did not take, without the entries EventIn could not store, and
    within `METADATA_BUDGET` (largest entries dropped first)."""
    kept = {key: value for key, value in message.items() if key not in _MAPPED}
    if isinstance(context := kept.get("context"), dict):
        kept["context"] = {k: v for k, v in context.items() if k not in _CONTEXT_MAPPED}
    sizes: dict[str, int] = {}
    for key, value in list(kept.items()):
        try:
            sizes[key] = len(orjson.dumps(value))
        except (TypeError, orjson.JSONEncodeError):
            sizes[key] = -1  # too deep, or a number beyond 64 bits
        if sizes[key] < 0 or metadata_problem({key: value}) is not None:
            del kept[key], sizes[key]
    total = sum(sizes.values())
    for key in sorted(sizes, key=sizes.__getitem__, reverse=True):
        if total <= METADATA_BUDGET:
            break
        total -= sizes[key]
        del kept[key]
    return kept or None


def map_message(
    message: Any, *, default_type: str | None, sent_at: Any, ip_policy: IpPolicy
) -> dict[str, Any] | str:
    """The EventIn (wire names) for one message, or why it cannot be one."""
    if not isinstance(message, dict):
        return "a message is a JSON object"
    kind = message.get("type", default_type)
    mapped_type = event_type(kind, message.get("event")) if isinstance(kind, str) else None
    if mapped_type is None:
        return f"unknown message type {kind!r}, or a track without an event name"
    context = _dict(message.get("context"))
    properties = _dict(message.get("properties"))
    page = _dict(context.get("page"))
    # An identify's traits are the person's; a group's are the company's.
    traits = {
        **_dict(context.get("traits")),
        **(_dict(message.get("traits")) if kind == "identify" else {}),
    }
    event: dict[str, Any] = {"type": mapped_type, "source": "segment"}
    visitor = message.get("previousId") if kind == "alias" else message.get("anonymousId")
    if (visitor_id := _id(visitor, VISITOR_LIMIT)) is not None:
        event["visitorId"] = visitor_id
    if found := person(_id(message.get("userId"), NAME_LIMIT), traits):
        event["person"] = found
    if kind == "group" and (name := _text(_dict(message.get("traits")).get("name"), 255)):
        event["company"] = {"name": name}
    fields = {
        "pageUrl": _url(properties.get("url")) or _url(page.get("url")),
        "pageTitle": _text(properties.get("title"), TITLE_LIMIT)
        or _text(page.get("title"), TITLE_LIMIT),
        "pageReferrer": _url(properties.get("referrer")) or _url(page.get("referrer")),
        "ipAddress": _ip(context.get("ip"), ip_policy),
        "userAgent": _text(context.get("userAgent"), UA_LIMIT),
        "occurredAt": _iso(parse_time(message.get("timestamp"))),
        "sentAt": _iso(parse_time(message.get("sentAt", sent_at))),
        "metadata": metadata(message),
    }
    event.update((name, value) for name, value in fields.items() if value is not None)
    return event


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
