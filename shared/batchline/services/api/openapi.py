"""The API's OpenAPI 3.1 document, generated from the route table and the pydantic models:
paths, parameters (path, query, the Idempotency-Key header), request bodies, and every
answer, errors included (each status an operation may give, with the one error shape).

`GET /v1/openapi.json` serves it; a copy is checked in next to this module
(`openapi.json`), which `make openapi` writes (`python -m batchline.services.api.openapi
PATH`) and a test compares with what the api function serves.
"""

from __future__ import annotations

import functools
import sys
from http import HTTPStatus
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from batchline.services.api.models import JOB_ID_PATTERN, ErrorBody
from batchline.services.api.routes import Media, Route, routes
from batchline.services.api.submit import MAX_IDEMPOTENCY_KEY_CHARS

CHECKED_IN = Path(__file__).with_name("openapi.json")
#: Printable ASCII, no comma, no space at either end (`submit.check_idempotency_key`).
IDEMPOTENCY_KEY_PATTERN = r"^[!-+\--~]([ -+\--~]*[!-+\--~])?$"
_REF = "#/components/schemas/{model}"


def document() -> dict[str, Any]:
    """The OpenAPI document, as a dict."""
    table = routes()
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorBody, "serialization")]
    for route in table:
        if route.body is not None and not isinstance(route.body, Media):
            wanted.append((route.body, "validation"))
        wanted += [
            (reply, "serialization")
            for reply in route.replies.values()
            if not isinstance(reply, Media)
        ]
    unique = list(dict.fromkeys(wanted))
    refs, definitions = models_json_schema(unique, ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for route in table:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "batchline API",
            "version": "1",
            "description": "Submit LLM batch jobs, follow them and read their results. "
            'Every error is `{"error": {"type", "message", "field"?}}`.',
        },
        "paths": paths,
        "components": {"schemas": definitions.get("$defs", {})},
    }


@functools.cache
def document_bytes() -> bytes:
    """The document as served and checked in: JSON, indented, ending in a newline."""
    return orjson.dumps(document(), option=orjson.OPT_INDENT_2) + b"\n"


def _operation(route: Route, refs: dict[Any, Any]) -> dict[str, Any]:
    """One operation: its id (the handler's name), parameters, body and every answer."""
    operation: dict[str, Any] = {
        "operationId": route.handler.__name__,
        "summary": route.summary,
    }
    if route.description:
        operation["description"] = route.description
    parameters = _parameters(route)
    if parameters:
        operation["parameters"] = parameters
    if isinstance(route.body, Media):
        operation["requestBody"] = {
            "required": True,
            "description": route.body.description,
            "content": {route.body.media_type: {"schema": dict(route.body.schema)}},
        }
    elif route.body is not None:
        schema = refs[(route.body, "validation")]
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    operation["responses"] = _responses(route, refs)
    return operation


def _parameters(route: Route) -> list[dict[str, Any]]:
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": _path_schema(name)}
        for name in _path_names(route.path)
    ]
    if route.query is not None:
        parameters += _query_parameters(route.query)
    if route.idempotent:
        parameters.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "The same key and body get the same job.",
                "schema": {
                    "type": "string",
                    "maxLength": MAX_IDEMPOTENCY_KEY_CHARS,
                    "pattern": IDEMPOTENCY_KEY_PATTERN,
                },
            }
        )
    parameters += [
        {
            "name": name,
            "in": "header",
            "required": True,
            "description": text,
            "schema": {"type": "string"},
        }
        for name, text in route.headers.items()
    ]
    return parameters


def _responses(route: Route, refs: dict[Any, Any]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, reply in sorted(route.replies.items()):
        if isinstance(reply, Media):
            content = {reply.media_type: {"schema": dict(reply.schema)}}
            description = reply.description
        else:
            content = {"application/json": {"schema": refs[(reply, "serialization")]}}
            description = (reply.__doc__ or HTTPStatus(status).phrase).strip().splitlines()[0]
        responses[str(status)] = {"description": description, "content": content}
        if (
            route.method == "POST"
            and not isinstance(reply, Media)
            and "job_id" in reply.model_fields
        ):
            responses[str(status)]["links"] = _job_links()
    error = {"application/json": {"schema": refs[(ErrorBody, "serialization")]}}
    for status in _error_statuses(route):
        responses[str(status)] = {"description": HTTPStatus(status).phrase, "content": error}
        if status == 503:
            responses[str(status)]["headers"] = {
                "Retry-After": {"description": "Seconds.", "schema": {"type": "string"}}
            }
    return responses


#: What a job can be asked for as soon as it exists (its summary and results come when it
#: ends: a 404 until then).
_LINKED = ("get_job", "cancel_job")


def _job_links() -> dict[str, Any]:
    """From an answer holding a job to the operations on that job it can be asked for at
    once (what a client, and schemathesis's stateful phase, follows)."""
    return {
        name: {"operationId": name, "parameters": {"job_id": "$response.body#/job_id"}}
        for name in _LINKED
    }


def _error_statuses(route: Route) -> list[int]:
    statuses = {400, 500, 503, *route.errors}
    if _path_names(route.path):
        statuses.add(404)
    if route.body is not None:
        statuses |= {413, 415}
    return sorted(statuses)


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.replace(":", "/").split("/") if part.startswith("{")]


def _path_schema(name: str) -> dict[str, Any]:
    if name == "job_id":
        return {"type": "string", "pattern": JOB_ID_PATTERN}
    return {"type": "string"}


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(mode="validation")
    required = set(schema.get("required", []))
    found = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        prop.pop("title", None)
        branches = [b for b in prop.pop("anyOf", []) if b.get("type") != "null"]
        if len(branches) == 1:  # `X | None`: a parameter left out is None
            prop = {**branches[0], **prop}
        if prop.get("default", 0) is None:
            del prop["default"]
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
        if "description" in prop:
            parameter["description"] = prop.pop("description")
        parameter["schema"] = prop
        found.append(parameter)
    return found


def main(argv: list[str]) -> int:
    """`python -m batchline.services.api.openapi [PATH]`: write the document (stdout
    without a path)."""
    data = document_bytes()
    if len(argv) > 1:
        Path(argv[1]).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
