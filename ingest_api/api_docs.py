"""docs/API.md, rendered from the API's own OpenAPI document so the two cannot drift.

`python -m ingest_api.api_docs` rewrites it; tests/ingest_api/test_api_docs.py fails when it
is stale.
"""

import json
import sys
from pathlib import Path
from typing import Any

from ingest_api.app import create_app
from shared.settings import Settings

TARGET = Path(__file__).resolve().parents[1] / "docs" / "API.md"

INTRODUCTION = """\
# Leadstream HTTP API

Generated from the OpenAPI document the API serves at `/openapi.json` (browse it at `/docs`)
by `python -m ingest_api.api_docs`; a test fails when this file is stale. Defaults shown are the
settings' defaults.

Compatible with Sure Send CRM's `POST /api/partner/events`. Field names are camelCase on the
wire. Every error is an RFC 9457 `application/problem+json` document:
`{type, title, status, detail, errors?: [{loc, msg, type}]}`, with the path of each wrong field
in `loc`. Server-to-server calls authenticate with `Authorization: Bearer <JWT>`, minted by
`leadstream token`; writes need the `events:write` scope (its default), reads `events:read`
(`--scope events:read`). A token is refused (401) once revoked or while its tenant is disabled.
"""


def render() -> str:
    """The whole document, from the settings' defaults (not this machine's environment)."""
    document = create_app(Settings.model_construct()).app.openapi()
    parts = [INTRODUCTION, "## Endpoints\n", _index(document)]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            parts.append(_operation(method.upper(), path, operation))
    parts.append("## Schemas\n")
    for name, schema in document["components"]["schemas"].items():
        parts.append(_schema(name, schema))
    return "\n".join(parts)


def _index(document: dict[str, Any]) -> str:
    rows = [
        f"| `{method.upper()}` | [`{path}`](#{_anchor(method, path)}) | {op.get('summary', '')} |"
        for path, operations in document["paths"].items()
        for method, op in operations.items()
    ]
    return "| method | path | what |\n|---|---|---|\n" + "\n".join(rows) + "\n"


def _anchor(method: str, path: str) -> str:
    text = f"{method} {path}".lower()
    return "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")


def _operation(method: str, path: str, operation: dict[str, Any]) -> str:
    lines = [f"### {method} {path}\n", f"**{operation.get('summary', '')}**"]
    if description := operation.get("description"):
        lines.append(f"\n{description}")
    if operation.get("security"):
        lines.append("\nAuthentication: Bearer token.")
    if parameters := operation.get("parameters"):
        lines += [
            "\n| parameter | in | required | type | limits, meaning |",
            "|---|---|---|---|---|",
        ]
        for p in parameters:
            schema = p.get("schema", {})
            notes = "; ".join(filter(None, (_limits(schema), _cell(p.get("description", "")))))
            lines.append(
                f"| `{p['name']}` | {p['in']} | {'yes' if p.get('required') else 'no'} "
                f"| {_type(schema)} | {notes} |"
            )
    if body := operation.get("requestBody"):
        for media, content in body.get("content", {}).items():
            lines.append(f"\nBody (`{media}`): {_type(content.get('schema', {}))}")
    lines += ["\n| status | meaning | body |", "|---|---|---|"]
    for status, response in operation.get("responses", {}).items():
        bodies = ", ".join(
            f"{_type(c.get('schema', {}))} (`{media}`)"
            for media, c in response.get("content", {}).items()
        )
        lines.append(f"| {status} | {_cell(response.get('description', ''))} | {bodies} |")
    return "\n".join(lines) + "\n"


def _schema(name: str, schema: dict[str, Any]) -> str:
    lines = [f"### {name}\n"]
    if description := schema.get("description"):
        lines.append(f"{description}\n")
    properties = schema.get("properties", {})
    if not properties:
        lines.append(f"{_type(schema)}\n")
        return "\n".join(lines)
    required = set(schema.get("required", []))
    lines += ["| field | type | required | limits |", "|---|---|---|---|"]
    for field, spec in properties.items():
        lines.append(
            f"| `{field}` | {_type(spec)} | {'yes' if field in required else 'no'} "
            f"| {_limits(spec)} |"
        )
    if schema.get("additionalProperties") is False:
        lines.append("\nUnknown fields are refused (422).")
    return "\n".join(lines) + "\n"


def _type(spec: dict[str, Any]) -> str:
    if "$ref" in spec:
        name = spec["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in spec:
        kinds = [_type(s) for s in spec["anyOf"] if s.get("type") != "null"]
        nullable = any(s.get("type") == "null" for s in spec["anyOf"])
        return " or ".join(kinds) + (" or null" if nullable else "")
    if spec.get("type") == "array":
        return f"array of {_type(spec.get('items', {}))}"
    if "enum" in spec:
        return " \\| ".join(f"`{_value(v)}`" for v in spec["enum"])
    if "const" in spec:
        return f"`{_value(spec['const'])}`"
    kind = str(spec.get("type", "any"))
    return f"{kind} ({spec['format']})" if "format" in spec else kind


_LIMITS = {
    "minLength": "≥ {} chars",
    "maxLength": "≤ {} chars",
    "minimum": "≥ {}",
    "maximum": "≤ {}",
    "minItems": "≥ {} items",
    "maxItems": "≤ {} items",
}


def _limits(spec: dict[str, Any]) -> str:
    found: list[str] = []
    for part in [spec, *spec.get("anyOf", [])]:
        found += [text.format(part[key]) for key, text in _LIMITS.items() if key in part]
    if "default" in spec and spec["default"] not in (None, [], {}):
        found.append(f"default `{_value(spec['default'])}`")
    return ", ".join(dict.fromkeys(found))


def _value(value: Any) -> str:
    # As the wire spells it: `true`, not Python's `True`.
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


if __name__ == "__main__":
    TARGET.write_text(render())
    sys.stdout.write(f"wrote {TARGET}\n")
