"""The jobs page on in-memory ports, through the api function's edge (`edge.handle`) as a
Flask app routes it: what it shows of running and finished jobs, that it escapes what
users wrote, its headers, and its own HTML errors beside the API's JSON ones. The browser
test (tests/e2e/test_page.py) runs it in Chromium on the local stack."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask.testing import FlaskClient
from functions_framework import create_app

from batchline import bootstrap
from batchline.bootstrap import Deps
from batchline.domain.models import (
    BatchState,
    Chunk,
    ChunkState,
    Job,
    JobOptions,
    JobState,
    Source,
)
from batchline.errors import AccessDenied, RetryableError
from batchline.ports import JobQuery
from batchline.services.api import outputs
from batchline.services.submit import handle_object_finalized
from batchline.web import is_page, pages, views
from batchline_tools.memory import MemoryBlobStore, MemoryJobStore

from .fakes import FakeClock, FakeProvider, make_deps
from .test_pipeline import finish, line, upload

XSS_ID = "<script>alert(1)</script>"
XSS_ROLE = "<img src=x onerror=alert(2)>"
FUNCTIONS_SOURCE = Path(__file__).resolve().parents[2] / "functions" / "main.py"


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    """Job ids repeat across in-memory stores: what one test read must not leak."""
    views.clear_caches()
    yield
    views.clear_caches()


@pytest.fixture
def wired(monkeypatch: pytest.MonkeyPatch) -> tuple[Deps, FakeProvider, FakeClock]:
    deps, provider, clock = make_deps(max_requests=3)
    monkeypatch.setattr(bootstrap, "_deps", deps)
    return deps, provider, clock


@pytest.fixture
def client(wired: tuple[Deps, FakeProvider, FakeClock]) -> FlaskClient:
    """The api function as functions-framework serves it (its Flask app has routes of its
    own, `/static/...` among them, that answer before the function is called)."""
    app = create_app(target="api", source=str(FUNCTIONS_SOURCE), signature_type="http")
    return app.test_client()


def finished_job(deps: Deps, data: bytes, name: str = "dir/in.jsonl", **kw: Any) -> Job:
    job = handle_object_finalized(deps, upload(deps, data, name, **kw))
    assert job is not None
    provider = deps.providers.get("openai")
    assert isinstance(provider, FakeProvider)
    provider.end()
    return finish(deps, job.job_id)[0]


def hostile_lines() -> bytes:
    return b"\n".join(
        [
            line(custom_id="ok-1"),
            line(custom_id=XSS_ID, messages=[{"role": XSS_ROLE, "content": "x"}]),
            line(custom_id="ok-2"),
        ]
    )


def text_of(reply: Any) -> str:
    return str(reply.get_data(as_text=True))


# ---------------------------------------------------------------------------- routes


@pytest.mark.parametrize(
    ("path", "page"),
    [
        ("/", True),
        ("/jobs/job-0", True),
        ("/assets/page.js", True),
        ("/v1/jobs", False),
        ("/v1/jobs/job-0", False),
        ("/jobs", False),
        ("/favicon.ico", False),
        ("/projects/p/topics/t", False),
    ],
)
def test_page_routes_are_the_root_jobs_and_static(path: str, page: bool) -> None:
    assert is_page(path) is page


def test_every_page_answer_carries_the_security_headers(
    client: FlaskClient, wired: tuple[Deps, FakeProvider, FakeClock]
) -> None:
    job = finished_job(wired[0], hostile_lines())
    for path in ("/", f"/jobs/{job.job_id}", "/assets/page.js", "/jobs/job-nope", "/?state=x"):
        reply = client.get(path)
        csp = reply.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "'unsafe-inline'" not in csp and "default-src 'none'" in csp
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        assert reply.headers["Referrer-Policy"] == "no-referrer"
    html = client.get("/")
    assert html.headers["Cache-Control"] == "no-store"
    assert html.mimetype == "text/html"


def test_the_page_has_no_inline_script_or_style(
    client: FlaskClient, wired: tuple[Deps, FakeProvider, FakeClock]
) -> None:
    """The CSP forbids them: the browser would refuse them and log errors."""
    job = finished_job(wired[0], hostile_lines())
    for path in ("/", f"/jobs/{job.job_id}", "/jobs/job-0"):
        tags = Tags()
        tags.feed(text_of(client.get(path)))
        assert [a for t, a in tags.seen if t == "script"] == [
            [("src", "/assets/page.js"), ("defer", None)]
        ]
        assert "style" not in [t for t, _ in tags.seen], path
        attributes = {name for _, attrs in tags.seen for name, _ in attrs}
        assert not {a for a in attributes if a.startswith("on") or a == "style"}, path
        # What users wrote never becomes an element.
        assert not {"img", "b", "i"} & {t for t, _ in tags.seen}, path


class Tags(HTMLParser):
    """Every start tag of a page with its attributes, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.append((tag, attrs))


def test_static_files_have_their_types_and_revalidate(client: FlaskClient) -> None:
    script = client.get("/assets/page.js")
    assert script.status_code == 200
    assert script.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert b"fragment" in script.data
    assert client.get("/assets/page.css").mimetype == "text/css"
    assert client.get("/assets/favicon.svg").mimetype == "image/svg+xml"
    again = client.get("/assets/page.js", headers={"If-None-Match": script.headers["ETag"]})
    assert again.status_code == 304 and not again.data
    for missing in ("/assets/nope.js", "/assets/../pages.py", "/assets/", "/assets/%2e%2e"):
        reply = client.get(missing)
        assert (reply.status_code, reply.mimetype) == (404, "text/html"), missing


def test_page_routes_answer_html_errors_and_the_api_keeps_json(
    client: FlaskClient, wired: tuple[Deps, FakeProvider, FakeClock]
) -> None:
    unknown = client.get(f"/jobs/job-{'0' * 24}")
    assert (unknown.status_code, unknown.mimetype) == (404, "text/html")
    assert f"no job job-{'0' * 24}" in text_of(unknown)
    not_an_id = client.get("/jobs/<b>x</b>")
    assert not_an_id.status_code == 404 and "<b>x</b>" not in text_of(not_an_id)
    assert client.get("/jobs/job-0/extra").status_code == 404
    post = client.post("/")
    assert (post.status_code, post.headers["Allow"], post.mimetype) == (
        405,
        "GET, HEAD",
        "text/html",
    )
    assert client.delete(f"/jobs/job-{'0' * 24}").status_code == 405
    bad = client.get("/?state=%3Cb%3E")
    assert bad.status_code == 400 and "&#39;&lt;b&gt;&#39;" in text_of(bad)
    assert client.get("/?label.%3Cx%3E=1").status_code == 400
    assert client.get("/?cursor=" + "c" * 2000).status_code == 400
    forged = client.get("/?cursor=bm90LWEtY3Vyc29y")
    assert forged.status_code == 400 and "not one this page made" in text_of(forged)
    head = client.head("/")
    assert head.status_code == 200 and not head.data
    # Every other path is the JSON API's, as before.
    for path in ("/v1/nope", "/jobs", "/nope"):
        reply = client.get(path)
        assert (reply.status_code, reply.mimetype) == (404, "application/json"), path
        assert reply.get_json()["error"]["type"] == "not_found"


def test_a_transient_failure_is_a_503_page_and_a_bug_a_500_with_an_error_id(
    client: FlaskClient,
    wired: tuple[Deps, FakeProvider, FakeClock],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = wired[0].store
    assert isinstance(store, MemoryJobStore)

    def unavailable(query: JobQuery) -> None:
        raise RetryableError("Firestore is unavailable")

    monkeypatch.setattr(store, "list_jobs", unavailable)
    reply = client.get("/")
    assert (reply.status_code, reply.headers["Retry-After"]) == (503, "5")
    assert "Firestore" not in text_of(reply)

    def broken(query: JobQuery) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(store, "list_jobs", broken)
    reply = client.get("/")
    assert reply.status_code == 500 and reply.mimetype == "text/html"
    error_id = re.search(r"error id ([0-9a-f]{16})", text_of(reply))
    assert error_id is not None and "a bug" not in text_of(reply)


# ------------------------------------------------------------------------ what it shows


def test_user_data_is_escaped_everywhere_it_is_shown(
    client: FlaskClient, wired: tuple[Deps, FakeProvider, FakeClock]
) -> None:
    deps = wired[0]
    metadata = {"label-team": "<i>ops</i>"}
    job = finished_job(deps, hostile_lines(), name="dir/<b>evil</b>.jsonl", metadata=metadata)
    listing = text_of(client.get("/"))
    detail = text_of(client.get(f"/jobs/{job.job_id}"))
    for html in (listing, detail):
        assert "<b>evil</b>" not in html and "&lt;b&gt;evil&lt;/b&gt;" in html
        assert "<i>ops</i>" not in html and "team=&lt;i&gt;ops&lt;/i&gt;" in html
    assert XSS_ID not in detail and "&lt;script&gt;alert(1)&lt;/script&gt;" in detail
    assert XSS_ROLE not in detail and "&lt;img src=x onerror=alert(2)&gt;" in detail


def test_a_finished_job_shows_its_counts_errors_cost_and_results_link(
    client: FlaskClient, wired: tuple[Deps, FakeProvider, FakeClock]
) -> None:
    deps = wired[0]
    job = finished_job(deps, hostile_lines())
    detail = views.job_detail(deps, job.job_id)
    assert detail is not None and detail.final and not detail.live
    assert detail.counts == [("succeeded", 2), ("invalid", 1)]
    assert [(g.type, g.count) for g in detail.errors] == [("invalid_request", 1)]
    (example,) = detail.errors[0].examples
    assert (example.line, example.custom_id) == (2, XSS_ID)
    assert XSS_ROLE in example.message
    summary = orjson.loads(deps.blobs.read_bytes(job.summary_uri))
    assert detail.row.cost.batch_usd == summary["cost"]["batch_usd"] > 0
    assert detail.row.cost.realtime_usd == summary["cost"]["realtime_usd"]
    assert detail.row.cost.saving_percent == 50  # real time is twice the batch price
    assert detail.row.providers == ("openai",)
    assert detail.row.progress == views.Progress(3, 3, "3 of 3 lines")
    html = text_of(client.get(f"/jobs/{job.job_id}"))
    assert f'href="/v1/jobs/{job.job_id}/results"' in html
    assert '<tr data-status="succeeded"><th>succeeded</th><td class="num">2</td></tr>' in html
    assert f"<code>{deps.store.get_chunks(job.job_id)[0].batch_id}</code>" in html
    assert "data-live" not in html


def test_a_running_job_shows_progress_from_its_chunks_and_asks_for_refreshes(
    client: FlaskClient, wired: tuple[Deps, FakeProvider, FakeClock]
) -> None:
    deps = wired[0]
    data = b"\n".join([*(line(custom_id=f"r{i}") for i in range(5)), b"not json"])
    job = handle_object_finalized(deps, upload(deps, data))
    assert job is not None
    chunks = deps.store.get_chunks(job.job_id)
    assert [c.request_count for c in chunks] == [3, 2]

    def report(index: int, completed: int, failed: int) -> None:
        def change(chunk: Chunk) -> Chunk:
            counts = {"total": chunk.request_count, "completed": completed, "failed": failed}
            return replace(chunk, batch_state=BatchState.RUNNING, batch_counts=counts)

        deps.store.update_chunk(job.job_id, index, change)

    report(0, 1, 1)
    detail = views.job_detail(deps, job.job_id)
    assert detail is not None and detail.live and not detail.final
    assert detail.row.progress == views.Progress(3, 6, "3 of 6 lines")  # 1 invalid + 2
    assert detail.counts == [("succeeded", 1), ("failed", 1), ("invalid", 1), ("waiting", 3)]
    assert detail.row.cost == views.Cost()  # counted at collect
    fragment = text_of(client.get(f"/jobs/{job.job_id}?fragment=1"))
    assert fragment.startswith('<div id="content" data-live="3">')
    assert "<html" not in fragment and "3 of 6 lines" in fragment
    report(1, 2, 0)
    listing = text_of(client.get("/?fragment=1"))
    assert 'data-live="3"' in listing and "5 of 6 lines" in listing
    assert '<progress max="6" value="5">' in listing


def test_progress_by_state() -> None:
    job = Job("job-x", Source("b", "n", "1", 1), JobOptions(), "gs://o/n/job-x/")
    assert views.progress(job, []) == views.Progress(0, 0, "waiting to be planned")
    planned = replace(job, state=JobState.SUBMITTING, counts={"lines": 10, "invalid": 2})
    chunk = Chunk("job-x", 0, "openai", "m", 8, 1, "gs://w/p", "gs://w/m")
    assert views.progress(planned, [chunk]).note == "2 of 10 lines"
    ended_unsent = replace(chunk, state=ChunkState.ENDED)
    assert views.progress(planned, [ended_unsent]).done == 10
    collecting = replace(planned, state=JobState.COLLECTING)
    answered = replace(ended_unsent, batch_counts={"completed": 8, "failed": 0})
    repair = replace(chunk, index=1, request_count=3, round=1, round_of=0)
    assert views.progress(collecting, [answered]).note == "10 of 10 lines; collecting the results"
    assert (
        views.progress(collecting, [answered, repair]).note == "10 of 10 lines; repairing 3 lines"
    )
    assert views.progress(collecting, [answered]).percent == 100
    assert views.Progress(999, 1000, "").percent == 99
    rejected = replace(job, state=JobState.REJECTED)
    assert views.progress(rejected, []).note == "rejected"


def test_the_list_pages_newest_first_and_filters_by_state_and_label(
    client: FlaskClient, wired: tuple[Deps, FakeProvider, FakeClock]
) -> None:
    deps, _, clock = wired
    ids = []
    for i in range(views.PAGE_SIZE + 2):
        clock.advance(1)
        metadata = {"label-batch": "odd" if i % 2 else "even"}
        job = handle_object_finalized(deps, upload(deps, line(), f"d/{i}.jsonl", metadata))
        assert job is not None
        ids.append(job.job_id)
    first = views.job_list(deps)
    assert [r.job.job_id for r in first.rows] == ids[::-1][: views.PAGE_SIZE]
    assert first.next_cursor is not None and first.live
    html = text_of(client.get("/"))
    link = re.search(r'href="(/\?[^"]*cursor=[^"]+)"', html)
    assert link is not None
    older = text_of(client.get(link.group(1).replace("&amp;", "&")))
    assert ids[0] in older and ids[1] in older and ids[-1] not in older
    odd = text_of(client.get("/?label.batch=odd"))
    shown = set(re.findall(r'data-job-id="(job-[0-9a-f]+)"', odd))
    assert shown == {ids[i] for i in range(1, len(ids), 2)}
    assert 'name="label.batch" value="odd"' in odd
    assert "No jobs match this filter." in text_of(client.get("/?state=succeeded"))


def test_an_unreadable_summary_leaves_the_page_up_with_a_note(
    client: FlaskClient, wired: tuple[Deps, FakeProvider, FakeClock]
) -> None:
    """Where the api function may not read the output bucket, the page shows what the
    job records hold and says what it could not read."""
    deps = wired[0]
    job = finished_job(deps, hostile_lines())

    class NoOutputs(MemoryBlobStore):
        def read_bytes(self, uri: str) -> bytes:
            if uri.startswith("gs://out/"):
                raise AccessDenied(f"403 reading {uri}")
            return super().read_bytes(uri)

    blobs = NoOutputs()
    assert isinstance(deps.blobs, MemoryBlobStore)
    blobs.objects = deps.blobs.objects
    deps.blobs = blobs
    reply = client.get(f"/jobs/{job.job_id}")
    assert reply.status_code == 200
    html = text_of(reply)
    assert "this function may not read the output bucket" in html
    assert '<tr data-status="succeeded"><th>succeeded</th><td class="num">2</td></tr>' in html
    assert views.job_detail(deps, job.job_id).row.cost.batch_usd == job.cost_usd  # type: ignore[union-attr]


def test_error_examples_are_the_first_few_of_each_type_from_a_bounded_read(
    wired: tuple[Deps, FakeProvider, FakeClock], monkeypatch: pytest.MonkeyPatch
) -> None:
    deps = wired[0]
    bad = [
        line(custom_id=f"bad-{i}", messages=[{"role": "robot", "content": "x"}]) for i in range(6)
    ]
    job = finished_job(deps, b"\n".join(bad))
    examples = views.error_examples(deps, job)
    assert [e.custom_id for e in examples["invalid_request"]] == ["bad-0", "bad-1", "bad-2"]
    views.clear_caches()
    first_line = len(deps.blobs.read_bytes(job.results_uri).split(b"\n", 1)[0]) + 1
    monkeypatch.setattr(outputs, "SEND_BLOCK_BYTES", 1)  # a block per line
    monkeypatch.setattr(views, "MAX_SCAN_BYTES", first_line)
    assert [e.custom_id for e in views.error_examples(deps, job)["invalid_request"]] == ["bad-0"]


def test_a_finished_jobs_outputs_are_read_once(
    wired: tuple[Deps, FakeProvider, FakeClock], monkeypatch: pytest.MonkeyPatch
) -> None:
    deps = wired[0]
    job = finished_job(deps, hostile_lines())
    reads: list[str] = []
    original: Callable[[str], bytes] = deps.blobs.read_bytes
    monkeypatch.setattr(deps.blobs, "read_bytes", lambda uri: reads.append(uri) or original(uri))
    for _ in range(3):
        views.job_list(deps)
        views.job_detail(deps, job.job_id)
    assert reads == [job.summary_uri]


def test_money_and_time_formats() -> None:
    assert pages.usd(None) == "—" and pages.usd(0) == "$0"
    assert pages.usd(1234.5) == "$1,234.50" and pages.usd(0.00012) == "$0.00012"
    assert pages.when(0) == "" and pages.when(1_800_000_000) == "2027-01-15 08:00:00 UTC"
