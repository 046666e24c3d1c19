"""One handler per operation of the route table (`routes.py`): read the call, run the
service, shape the answer. Errors are raised as the services' exceptions (`errors.py`),
which `batchline.edge` turns into the API's one error shape.

What only submitting or planning needs (the request parser, the planner) is imported by
those handlers when called: a cold instance answering reads does not load it."""

from __future__ import annotations

import re
from datetime import datetime

from batchline.bootstrap import deps
from batchline.domain.models import JobState
from batchline.ports import InvalidCursor, JobQuery
from batchline.services.api import outputs
from batchline.services.api.call import Answer, Call, Raw, Stream
from batchline.services.api.errors import BadRequest, Conflict, Missing
from batchline.services.api.estimates import EstimateView
from batchline.services.api.models import (
    JobList,
    JobView,
    ListQuery,
    ResultsQuery,
    SubmittedJob,
    WebhookReceipt,
)
from batchline.services.api.validation import validated
from batchline.services.api.views import job_finish, job_view

LABEL_PARAMETER = "label."


def create_job(call: Call) -> Answer:
    """POST /v1/jobs."""
    from batchline.edge import read_json_body
    from batchline.services.api import submit

    key = submit.check_idempotency_key(call.request.headers.getlist("Idempotency-Key"))
    command = submit.SubmitJob.from_http(read_json_body(call.request), key)
    job, created = submit.submit_job(deps(), command)
    view = {**job_view(job), "idempotency_key": command.idempotency_key}
    return (202 if created else 200), SubmittedJob.model_validate(view)


def list_jobs(call: Call) -> Answer:
    """GET /v1/jobs: `label.<key>` parameters are the label filters, the rest the query
    model's."""
    from batchline.domain.options import LABEL_KEY_PATTERN, MAX_LABELS

    args = call.request.args
    labels: dict[str, str] = {}
    rest: dict[str, str] = {}
    for name in args:
        values = args.getlist(name)
        if len(values) > 1:
            raise BadRequest(f"the query parameter {name!r} is given {len(values)} times", name)
        if not name.startswith(LABEL_PARAMETER):
            rest[name] = values[0]
            continue
        key = name[len(LABEL_PARAMETER) :]
        if not re.fullmatch(LABEL_KEY_PATTERN, key):
            raise BadRequest(f"{name!r}: a label key is {LABEL_KEY_PATTERN}", name)
        labels[key] = values[0]
    if len(labels) > MAX_LABELS:
        raise BadRequest(f"at most {MAX_LABELS} label filters", "label")
    wanted = validated(ListQuery, rest, what="query parameter")
    query = JobQuery(
        state=None if wanted.state is None else JobState(wanted.state),
        labels=labels,
        created_after=_epoch(wanted.created_after, "created_after"),
        created_before=_epoch(wanted.created_before, "created_before"),
        limit=wanted.limit,
        cursor=wanted.cursor,
    )
    try:
        page = deps().store.list_jobs(query)
    except InvalidCursor as exc:
        raise BadRequest(f"'cursor': {exc}", "cursor") from None
    jobs = [JobView.model_validate(job_view(job)) for job in page.jobs]
    return 200, JobList(jobs=jobs, next_cursor=page.next_cursor)


def _epoch(text: str | None, name: str) -> float | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text.replace("z", "Z")).timestamp()
    except ValueError as exc:
        raise BadRequest(f"{name!r}: not a date-time ({exc})", name) from None


def get_job(call: Call) -> Answer:
    """GET /v1/jobs/{job_id}."""
    wired = deps()
    found = wired.store.get_job(call.job_id)
    if found is None:
        raise Missing(f"no job {call.job_id}", "job_id")
    estimate = job_finish(wired.store, found, wired.clock.now())
    return 200, JobView.model_validate(job_view(found, estimate))


def cancel_job(call: Call) -> Answer:
    """POST /v1/jobs/{job_id}:cancel."""
    from batchline.services.cancel import JobEnded, request_cancel

    wired = deps()
    try:
        found = request_cancel(wired.store, call.job_id, wired.clock.now())
    except JobEnded as exc:
        raise Conflict(str(exc), "job_id") from None
    if found is None:
        raise Missing(f"no job {call.job_id}", "job_id")
    return (200 if found.state.terminal else 202), JobView.model_validate(job_view(found))


def _outputs() -> outputs.Outputs:
    wired = deps()
    return outputs.Outputs(wired.store, wired.blobs, wired.settings.output_bucket)


def get_summary(call: Call) -> Answer:
    """GET /v1/jobs/{job_id}/summary."""
    return 200, Raw(outputs.summary(_outputs(), call.job_id))


def get_results(call: Call) -> Answer:
    """GET /v1/jobs/{job_id}/results, streamed."""
    wanted = validated(ResultsQuery, call.request.args.to_dict(), what="query parameter")
    blocks = outputs.results(
        _outputs(),
        call.job_id,
        outputs.ResultsWanted(wanted.status, wanted.offset, wanted.limit),
    )
    return 200, Stream(blocks, "application/jsonl")


def estimate_job(call: Call) -> Answer:
    """POST /v1/jobs:estimate: a dry run of planning, on inline lines or an input object."""
    from batchline.domain.lines import UnreadableInput
    from batchline.edge import read_json_body
    from batchline.services import estimate
    from batchline.services.api import submit
    from batchline.services.api.validation import job_request

    wired = deps()
    job = job_request(read_json_body(call.request))
    try:
        if job.requests is not None:
            found = estimate.dry_run(wired, estimate.inline_source(job.requests), job.options)
        else:
            assert job.input_uri is not None
            source = submit.input_object(wired, job.input_uri)
            found = estimate.dry_run_object(wired, source, job.options)
    except UnreadableInput as exc:
        raise BadRequest(
            str(exc), "requests" if job.requests is not None else "input_uri"
        ) from None
    return 200, EstimateView.model_validate(found.view(wired))


def openai_webhook(call: Call) -> Answer:
    """POST /v1/webhooks/openai (`services.openai_webhooks`)."""
    from batchline.services.openai_webhooks import receive

    status, receipt = receive(call.request)
    return status, WebhookReceipt.model_validate(receipt)


def openapi_document(call: Call) -> Answer:
    """GET /v1/openapi.json."""
    from batchline.services.api.openapi import document_bytes

    return 200, Raw(document_bytes())
