from batchline.domain.models import ResultStatus
from batchline.domain.providers.openai import normalise


def test_success_line() -> None:
    body = {
        "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
    got = normalise(
        {
            "id": "batch_req_1",
            "custom_id": "bl-4",
            "response": {"status_code": 200, "request_id": "r", "body": body},
            "error": None,
        }
    )
    assert (got.request_id, got.status, got.text, got.finish_reason) == (
        "bl-4",
        ResultStatus.SUCCEEDED,
        "hi",
        "stop",
    )
    assert got.usage == {"input_tokens": 3, "output_tokens": 2, "cached_input_tokens": 0}
    assert got.response is body


def test_http_error_line_goes_failed_with_type_and_retryable() -> None:
    body = {"error": {"message": "boom", "type": "server_error"}}
    got = normalise(
        {"custom_id": "bl-1", "response": {"status_code": 500, "body": body}, "error": None}
    )
    assert got.status is ResultStatus.FAILED
    assert got.error == {"type": "server_error", "message": "boom", "retryable": True}
    got = normalise(
        {"custom_id": "bl-1", "response": {"status_code": 400, "body": body}, "error": None}
    )
    assert got.error is not None and got.error["retryable"] is False


def test_expired_line() -> None:
    got = normalise(
        {
            "custom_id": "bl-9",
            "response": None,
            "error": {"code": "batch_expired", "message": "too late"},
        }
    )
    assert got.status is ResultStatus.EXPIRED and got.error == {
        "type": "batch_expired",
        "message": "too late",
        "retryable": True,
    }
