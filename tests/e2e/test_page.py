"""The jobs page in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`) driven by selenium, against the whole local stack.

The page must load with no console errors (its Content-Security-Policy refuses inline
script, so an injection would show there too), follow a running job as its provider
batches answer (held in the emulator and released one at a time: no test races a clock),
show a finished job's counts, and show what users wrote (custom ids, error messages,
labels, file names) as text. Every wait is for a condition in the page, bounded at
PAGE_WAIT seconds (the bound only ends a failure). A failing test leaves a screenshot
and the page's HTML in its temp dir and prints where.

Chromium missing is a skip on a developer machine and a failure in CI (`CI=true`),
where `.ci/run` installs it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
import requests

from batchline.domain.models import JobState

from ..conftest import unavailable
from .conftest import PHASE_REPORTS, Pipeline

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

pytestmark = pytest.mark.e2e

CHROMIUM = Path(os.environ.get("BATCHLINE_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("BATCHLINE_CHROMEDRIVER", "/usr/bin/chromedriver"))
#: Run as root in a container: no sandbox; and nothing that reaches for the network.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)
#: Bounds every wait for the page (a loaded 2-core machine is slow, not wrong).
PAGE_WAIT = 60.0
XSS_ID = "<script>alert(1)</script>"
XSS_ROLE = "<img src=x onerror=alert(2)>"
XSS_LABEL = "<b onmouseover=alert(3)>ops</b>"
MINI = "openai/gpt-4.1-mini"
NANO = "openai/gpt-4.1-nano"


def require_chromium() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if not missing:
        return
    reason = f"{', '.join(missing)} missing (apt-get install chromium chromium-driver)"
    unavailable(reason)


@pytest.fixture(scope="package", autouse=True)
def chromium_present() -> None:
    """Checked before the local stack starts for these tests (autouse comes first)."""
    require_chromium()


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """One headless Chromium for the module, with a fresh profile, its console kept."""
    require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    home = tmp_path_factory.mktemp("chromium")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={home / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The driver's path is given: selenium does not look for (or download) one.
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(home / "driver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(
    chromium: WebDriver, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[WebDriver]:
    """The module's Chromium for one test: its console starts empty, and if the test
    fails, a screenshot and the page's HTML are saved in the test's temp dir."""
    chromium.get_log("browser")  # what earlier tests left
    yield chromium
    reports = request.node.stash.get(PHASE_REPORTS, {})
    if any(r.failed for r in reports.values()):
        shot = tmp_path / "page.png"
        chromium.save_screenshot(str(shot))
        (tmp_path / "page.html").write_text(chromium.page_source)
        print(f"\nscreenshot of the failing page: {shot} (its HTML beside it)")


def console_errors(driver: WebDriver) -> list[dict[str, Any]]:
    """What the page logged to the console at warning level or above since last asked."""
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]


def wait_for(driver: WebDriver, what: str, condition: Callable[[WebDriver], Any]) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, PAGE_WAIT, poll_frequency=0.25).until(condition)
    except TimeoutException:
        raise AssertionError(f"the page did not show {what} within {PAGE_WAIT:.0f} s") from None


def text_of(driver: WebDriver, css: str) -> str:
    """The text of the first element matching `css`, "" when there is none (it may be
    swapped out by a refresh between finding it and reading it)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        return str(found[0].text) if found else ""
    except StaleElementReferenceException:
        return ""


def progress_done(driver: WebDriver) -> int | None:
    """The lines done according to the page's progress note (None: not shown yet)."""
    return driver.execute_script(  # type: ignore[no-any-return]
        "const n = document.querySelector('#content .progress-note');"
        "return n ? Number(n.dataset.done) : null;"
    )


def line(model: str, custom_id: str, **extra: Any) -> bytes:
    body = {"custom_id": custom_id, "model": model, "max_tokens": 20}
    body["messages"] = [{"role": "user", "content": f"Say hi to {custom_id}."}]
    return orjson.dumps({**body, **extra}) + b"\n"


def release(pipeline: Pipeline, batch_id: str) -> None:
    reply = requests.post(
        f"{pipeline.emulator}/_emulator/release", json={"batch": batch_id}, timeout=10
    )
    reply.raise_for_status()
    assert reply.json()["released"] == [batch_id]


def test_a_running_jobs_progress_moves_and_its_counts_show_when_it_ends(
    pipeline: Pipeline, emulator_defaults: Callable[..., None], browser: WebDriver
) -> None:
    emulator_defaults(hold_after_lines=2)
    data = b"".join(line(MINI, f"mini-{i}") for i in range(5))
    data += b"".join(line(NANO, f"nano-{i}") for i in range(5))
    job_id, _ = pipeline.upload("page/progress.jsonl", data)
    chunks = sorted(pipeline.wait_held(job_id), key=lambda c: c.index)
    assert [c.request_count for c in chunks] == [5, 5]

    page = pipeline.stack.page_url
    browser.get(f"{page}jobs/{job_id}")
    # Set on this document only: a reload would lose it; the script's refreshes do not.
    browser.execute_script("window.loadedOnce = true;")
    wait_for(browser, "4 lines done (2 per held batch)", lambda d: progress_done(d) == 4)
    assert text_of(browser, "#content .progress-note") == "4 of 10 lines"
    assert text_of(browser, "#content .state") == "running"
    batch_ids = {text_of(browser, f'#content tr[data-chunk="{c.index}"] .batch-id') for c in chunks}
    assert batch_ids == {c.batch_id for c in chunks}, batch_ids

    release(pipeline, str(chunks[0].batch_id))
    wait_for(browser, "7 lines done (one batch released)", lambda d: progress_done(d) == 7)
    release(pipeline, str(chunks[1].batch_id))
    wait_for(browser, "the job succeeded", lambda d: text_of(d, "#content .state") == "succeeded")
    assert browser.execute_script("return window.loadedOnce === true;"), "the page was reloaded"
    assert text_of(browser, '#content tr[data-status="succeeded"] td') == "10"
    assert text_of(browser, "#content .progress-note") == "10 of 10 lines"
    # An ended job stops the refreshes.
    assert browser.execute_script("return document.getElementById('content').dataset.live") is None
    link = browser.find_element("css selector", "#content a.download")
    assert link.get_attribute("href") == f"{page}v1/jobs/{job_id}/results"
    assert console_errors(browser) == []

    job = pipeline.wait(job_id)
    assert job.state is JobState.SUCCEEDED
    browser.get(page)
    wait_for(browser, "the job in the list", lambda d: text_of(d, f'tr[data-job-id="{job_id}"]'))
    row = f'tr[data-job-id="{job_id}"]'
    assert text_of(browser, f"{row} .state") == "succeeded"
    assert text_of(browser, f"{row} .progress-note") == "10 of 10 lines"
    assert text_of(browser, f"{row} .source") == "page/progress.jsonl"
    assert text_of(browser, f"{row} .cost").startswith("$")
    assert text_of(browser, f"{row} .saving").endswith("(50%)")
    assert console_errors(browser) == []


def test_what_users_wrote_stays_text(pipeline: Pipeline, browser: WebDriver) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions

    data = line(MINI, "fine")
    data += line(MINI, XSS_ID, messages=[{"role": XSS_ROLE, "content": "x"}])
    job_id, _ = pipeline.upload(
        "page/<b>bold</b> & co.jsonl", data, metadata={"label-team": XSS_LABEL}
    )
    job = pipeline.wait(job_id)
    assert job.state is JobState.PARTIAL
    page = pipeline.stack.page_url

    browser.get(f"{page}jobs/{job_id}")
    wait_for(browser, "the error examples", lambda d: text_of(d, ".examples .custom-id"))
    assert text_of(browser, ".examples .custom-id") == XSS_ID
    assert XSS_ROLE in text_of(browser, ".examples .message")
    assert text_of(browser, "dd.source").endswith("page/<b>bold</b> & co.jsonl")
    assert text_of(browser, ".label") == f"team={XSS_LABEL}"
    assert text_of(browser, '#content tr[data-error-type="invalid_request"] td.num') == "1"
    assert_nothing_injected(browser)

    browser.get(page)
    wait_for(browser, "the job in the list", lambda d: text_of(d, f'tr[data-job-id="{job_id}"]'))
    row = f'tr[data-job-id="{job_id}"]'
    assert text_of(browser, f"{row} .source") == "page/<b>bold</b> & co.jsonl"
    assert text_of(browser, f"{row} .label") == f"team={XSS_LABEL}"
    assert_nothing_injected(browser)
    assert expected_conditions.alert_is_present()(browser) is False
    assert browser.find_elements(By.CSS_SELECTOR, "#content b") == []


def assert_nothing_injected(browser: WebDriver) -> None:
    """No alert opened, no element made of user text, and nothing the CSP refused."""
    from selenium.webdriver.support import expected_conditions

    assert expected_conditions.alert_is_present()(browser) is False
    found = browser.execute_script(
        "return {"
        " scripts: Array.from(document.scripts, s => s.getAttribute('src')),"
        " injected: document.querySelectorAll('#content img, #content b, #content script').length,"
        " handlers: Array.from(document.querySelectorAll('*')).flatMap("
        "   e => Array.from(e.attributes, a => a.name)).filter(n => n.startsWith('on')),"
        "};"
    )
    assert found == {"scripts": ["/assets/page.js"], "injected": 0, "handlers": []}, found
    assert console_errors(browser) == []
