"""What a caller sent, checked: a body or query against its pydantic model, then the rules
that `POST /v1/jobs` and `POST /v1/jobs:estimate` share. pydantic's errors become the
API's one error shape, `field` a dotted path (`options.labels.team`, `requests[3]`);
pydantic's own error text and structure never reach the caller."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from batchline.domain.models import JobOptions
from batchline.services.api.errors import BadRequest, TooLarge
from batchline.services.api.models import JobInput

Model = TypeVar("Model", bound=BaseModel)

MAX_INLINE_REQUESTS = 10_000


def validated(model: type[Model], data: Any, *, what: str = "field") -> Model:
    """`data` as `model`; raises BadRequest naming the first field that is wrong. `what`
    says what a name is to the caller ("field", "query parameter")."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _bad_request(exc, what) from None


def dotted(loc: tuple[int | str, ...]) -> str:
    """pydantic's error location as the API names fields: `requests[3].model`."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


#: What to say of a field whose value has the wrong type or size, where the model's own
#: words would say less (as the API said before it had models).
_SAID = {
    "requests": "'requests' must be a non-empty list",
    "input_uri": "'input_uri' must be a gs:// URI",
    "options": "'options' must be an object",
}


def _bad_request(exc: ValidationError, what: str) -> BadRequest:
    error = exc.errors(include_url=False, include_input=False, include_context=False)[0]
    field = dotted(tuple(error["loc"]))
    kind = error["type"]
    if not field:
        return BadRequest("the body must be a JSON object", "body")
    if field in _SAID and kind not in ("extra_forbidden", "missing"):
        return BadRequest(_SAID[field], field)
    if kind == "extra_forbidden":
        return BadRequest(f"unknown {what} {str(error['loc'][-1])!r}", field)
    if kind == "missing":
        return BadRequest(f"the {what} {field!r} is required", field)
    return BadRequest(f"{field!r}: {error['msg'][:1].lower()}{error['msg'][1:]}", field)


@dataclass(frozen=True)
class JobRequest:
    """A job's input and options, as POST /v1/jobs and POST /v1/jobs:estimate take them."""

    requests: list[Any] | None
    input_uri: str | None
    options: JobOptions


def job_request(body: Any) -> JobRequest:
    """The job a parsed JSON body describes; raises BadRequest or TooLarge naming the
    field. The types are the model's; the values are checked by the domain's rules."""
    checked = validated(JobInput, body)
    if (checked.requests is None) == (checked.input_uri is None):
        raise BadRequest("give exactly one of 'requests' (a list) or 'input_uri' (gs://...)")
    if checked.requests is not None and len(checked.requests) > MAX_INLINE_REQUESTS:
        raise TooLarge(
            f"at most {MAX_INLINE_REQUESTS} inline requests; use 'input_uri'", "requests"
        )
    from batchline.domain.options import OptionError, OptionTooLarge
    from batchline.domain.options import from_api as job_options_from_api

    raw: Mapping[str, Any] = body.get("options") or {}
    try:
        options = job_options_from_api(raw)
    except OptionTooLarge as exc:
        raise TooLarge(f"'options.{exc.option}': {exc.reason}", f"options.{exc.option}") from None
    except OptionError as exc:
        raise BadRequest(f"'options.{exc.option}': {exc.reason}", f"options.{exc.option}") from None
    return JobRequest(checked.requests, checked.input_uri, options)
