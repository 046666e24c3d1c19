"""What the Cloud Functions do with their events, kept out of `functions/main.py` so that
the entry points stay a few lines and this stays testable without functions-framework.

Raising tells the trigger to retry: only for retryable failures. Permanent failures are
logged (and recorded by the services) and acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from batchline.errors import PermanentError, ProviderError
from batchline.log import fields, get_logger

if TYPE_CHECKING:
    from flask import Request, Response

    from batchline.bootstrap import Deps

log = get_logger("batchline.functions")


def run_event(name: str, work: Callable[[Deps], Any]) -> None:
    from batchline.bootstrap import deps

    try:
        work(deps())
    except ProviderError as exc:
        if exc.retryable:
            log.warning(f"{name}: retryable provider error", extra=fields(error=str(exc)))
            raise
        log.error(f"{name}: permanent provider error, acknowledged", extra=fields(error=str(exc)))
    except PermanentError as exc:
        log.error(f"{name}: permanent error, acknowledged", extra=fields(error=str(exc)))


def submit(deps: Deps, data: Any) -> None:
    from batchline.services.submit import ObjectFinalized, handle_object_finalized

    if not isinstance(data, dict) or not data.get("bucket") or not data.get("name"):
        log.error("submit: event without bucket/name, acknowledged")
        return
    event = ObjectFinalized(
        bucket=data["bucket"],
        name=data["name"],
        generation=str(data.get("generation") or "0"),
        size=int(data.get("size") or 0),
        md5=data.get("md5Hash"),
        content_encoding=data.get("contentEncoding"),
        metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
    )
    handle_object_finalized(deps, event)


def poll(deps: Deps) -> None:
    from batchline.services.poll import poll as run_poll

    report = run_poll(deps)
    log.info("poll tick", extra=fields(jobs=report.jobs, errors=len(report.errors)))


def collect(deps: Deps, message: Any) -> None:
    from batchline.services.collect import collect as run_collect

    job_id = message.get("job_id") if isinstance(message, dict) else None
    if not isinstance(job_id, str):
        log.error("collect: message without job_id, acknowledged")
        return
    run_collect(deps, job_id)


def api(request: Request) -> Response:
    from flask import Response

    from batchline.bootstrap import deps
    from batchline.errors import RetryableError
    from batchline.services import api as service
    from batchline.services.cancel import JobEnded, request_cancel

    def reply(status: int, body: Any) -> Response:
        return Response(orjson.dumps(body), status=status, mimetype="application/json")

    path = request.path.rstrip("/")
    parts = [p for p in path.split("/") if p]
    try:
        if parts == ["v1", "jobs"] and request.method == "POST":
            body = request.get_json(silent=True)
            if body is None:
                return reply(
                    400, {"error": {"type": "bad_request", "message": "the body must be JSON"}}
                )
            command = service.SubmitJob.from_http(body, request.headers.get("Idempotency-Key"))
            job, created = service.submit_job(deps(), command)
            view = service.job_view(job)
            view["idempotency_key"] = command.idempotency_key
            return reply(202 if created else 200, view)
        if len(parts) == 3 and parts[:2] == ["v1", "jobs"] and request.method == "GET":
            found = deps().store.get_job(parts[2])
            if found is None:
                return reply(404, {"error": {"type": "not_found", "message": f"no job {parts[2]}"}})
            return reply(200, service.job_view(found))
        if (
            len(parts) == 3
            and parts[:2] == ["v1", "jobs"]
            and parts[2].endswith(":cancel")
            and request.method == "POST"
        ):
            job_id, wired = parts[2].removesuffix(":cancel"), deps()
            try:
                found = request_cancel(wired.store, job_id, wired.clock.now())
            except JobEnded as exc:
                return reply(409, {"error": {"type": "job_ended", "message": str(exc)}})
            if found is None:
                return reply(404, {"error": {"type": "not_found", "message": f"no job {job_id}"}})
            return reply(200 if found.state.terminal else 202, service.job_view(found))
        return reply(
            404,
            {
                "error": {
                    "type": "not_found",
                    "message": f"{request.method} {path} is not an operation",
                }
            },
        )
    except service.BadRequest as exc:
        return reply(400, {"error": {"type": "bad_request", "message": str(exc)}})
    except service.KeyReused as exc:
        return reply(409, {"error": {"type": "idempotency_key_reused", "message": str(exc)}})
    except (RetryableError, ProviderError) as exc:
        log.warning("api: transient failure", extra=fields(error=str(exc)))
        return reply(503, {"error": {"type": "unavailable", "message": str(exc)}})
