"""What the Cloud Functions do with their events, kept out of `functions/main.py` so that
the entry points stay a few lines and this stays testable without functions-framework.

Raising tells the trigger to retry: only for retryable failures. Permanent failures are
logged (and recorded by the services) and acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from batchline.errors import PermanentError, RetryableError
from batchline.log import fields, get_logger

if TYPE_CHECKING:
    from flask import Request, Response

    from batchline.bootstrap import Deps

log = get_logger("batchline.functions")


def run_event(name: str, work: Callable[[Deps], Any]) -> None:
    from batchline.bootstrap import deps

    try:
        work(deps())
    except RetryableError as exc:
        log.warning(f"{name}: retryable failure, redelivery asked", extra=fields(error=str(exc)))
        raise
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


def poll(deps: Deps, message: Any) -> None:
    from batchline.services.poll import handle as run_poll
    from batchline.services.poll import job_message

    job_id = job_message(message)
    report = run_poll(deps, message)
    what = "poll job" if job_id is not None else "poll tick"
    log.info(what, extra=fields(job_id=job_id, jobs=report.jobs, errors=len(report.errors)))


def collect(deps: Deps, message: Any) -> None:
    from batchline.services.collect_fanout import collect_one, fan_out

    job_id = message.get("job_id") if isinstance(message, dict) else None
    if not isinstance(job_id, str):
        log.error("collect: message without job_id, acknowledged")
        return
    chunk = message.get("chunk")
    if chunk is None:
        fan_out(deps, job_id)  # one message per chunk, then the job's merge
    elif isinstance(chunk, int) and not isinstance(chunk, bool) and chunk >= 0:
        collect_one(deps, job_id, chunk)
    else:
        log.error("collect: chunk is not a chunk index, acknowledged", extra=fields(job_id=job_id))


def notify(deps: Deps, message: Any) -> None:
    from batchline.services.notify import Delivery, deliver

    delivery = Delivery.from_message(message)
    if delivery is None:
        log.error("notify: message without a delivery, acknowledged")
        return
    deliver(deps, delivery)


def api(request: Request) -> Response:
    from batchline.edge import handle

    return handle(request)


def not_routed(request: Request) -> Response:
    from batchline.edge import not_routed as answer

    return answer(request)
