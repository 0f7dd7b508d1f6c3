"""Contract checks against Discord's own OpenAPI spec (vendored in spec/openapi.json).

Responses are checked strictly. Requests are checked with one relaxation: discord.py sends
snowflakes in request bodies as JSON integers (e.g. ``message_reference.message_id``), which
Discord accepts but the spec types as strings, so ``SnowflakeType`` also admits integers there.
Validators are compiled once per (direction, operation, status) and cached.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).parent / "spec" / "openapi.json"
_URN = "urn:discord-openapi"


class SpecViolation(AssertionError):
    """A payload that does not match Discord's OpenAPI spec."""


@functools.cache
def _spec() -> dict:
    return json.loads(SPEC_PATH.read_text())


@functools.cache
def _registry(relaxed_snowflakes: bool) -> Registry:
    spec = _spec()
    if relaxed_snowflakes:
        schemas = dict(spec["components"]["schemas"])
        schemas["SnowflakeType"] = {
            "anyOf": [schemas["SnowflakeType"], {"type": "integer", "minimum": 0}]
        }
        spec = {**spec, "components": {**spec["components"], "schemas": schemas}}
    resource = Resource.from_contents(spec, default_specification=DRAFT202012)
    return Registry().with_resource(_URN, resource)


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def operation_exists(method: str, path: str) -> bool:
    return method.lower() in _spec()["paths"].get(path, {})


@functools.cache
def _validator(direction: str, method: str, path: str, status: int | None) -> Draft202012Validator | None:
    """The validator for one request body or response body; None when the spec defines no JSON body."""
    op = _spec()["paths"][path][method.lower()]
    if direction == "request":
        where = ("paths", path, method.lower(), "requestBody", "content", "application/json", "schema")
        if "application/json" not in op.get("requestBody", {}).get("content", {}):
            return None
    else:
        responses = op["responses"]
        key = next((k for k in (str(status), f"{str(status)[0]}XX", "default") if k in responses), None)
        if key is None:
            raise SpecViolation(f"{method} {path}: status {status} is not documented (has {sorted(responses)})")
        response = responses[key]
        if "$ref" in response:  # e.g. #/components/responses/ClientErrorResponse
            where = tuple(response["$ref"][2:].split("/")) + ("content", "application/json", "schema")
            response = _spec()["components"]["responses"][where[2]]
        else:
            where = ("paths", path, method.lower(), "responses", key, "content", "application/json", "schema")
        if "application/json" not in response.get("content", {}):
            return None
    schema = {"$ref": f"{_URN}#/{_pointer(*where)}"}
    return Draft202012Validator(schema, registry=_registry(direction == "request"))


def _check(validator: Draft202012Validator | None, body: Any, what: str) -> None:
    if validator is None:
        if body is not None:
            raise SpecViolation(f"{what}: the spec defines no JSON body, got {body!r:.200}")
        return
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  at /{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in errors[:8]]
        raise SpecViolation(f"{what} does not match the OpenAPI spec:\n" + "\n".join(lines))


def check_request(method: str, path: str, body: Any) -> None:
    """Validate a JSON request body (or a multipart ``payload_json``) for ``method path``.

    ``path`` is the spec's template, e.g. ``/channels/{channel_id}/messages``.
    """
    if body is None:
        return
    _check(_validator("request", method, path, None), body, f"request body of {method} {path}")


def check_response(method: str, path: str, status: int, body: Any) -> None:
    """Validate a JSON response body (None for an empty body) for ``method path`` and ``status``."""
    _check(_validator("response", method, path, status), body, f"{status} response of {method} {path}")


def check_schema(name: str, payload: Any, what: str | None = None) -> None:
    """Validate ``payload`` against ``#/components/schemas/<name>`` (e.g. MESSAGE_CREATE vs MessageResponse)."""
    _check(_schema_validator(name), payload, what or name)


@functools.cache
def _schema_validator(name: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"{_URN}#/components/schemas/{name}"}, registry=_registry(False))
