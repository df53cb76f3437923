"""An admin retrains from the browser against `cxr-review serve` (which starts its own worker process):
start a job from the training page, watch its progress bar move, read the report (paper-style table,
per-source rows, charts), promote the new version and find it all in the audit log. No console
errors (a CSP violation would be one). Screenshots: /tmp/ui-shots/training-*.png.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.db import make_engine, make_session_factory, upgrade_database
from app.services import accounts
from tests.browser.conftest import LiveServer, Shots, spawned
from tests.support.training import write_tiny_manifest

pytestmark = pytest.mark.browser

VIEWPORT = {"width": 1500, "height": 1000}
JOB_TIMEOUT_S = 300
EPOCHS, MAX_STEPS = 6, 3  # 12 training films, batch 4: 3 steps/epoch, 18 progress updates


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory, cxr_data_dir: Path) -> Iterator[LiveServer]:
    """`python -m app.cli serve` (web server + embedded training worker) on a tiny real dataset."""
    data_dir = tmp_path_factory.mktemp("training-browser")
    tiny = write_tiny_manifest(cxr_data_dir, tmp_path_factory.mktemp("tiny-cxr"))
    username, password = "dr.admin", "retrain the model"
    engine = make_engine(Settings(data_dir=data_dir).prepared().resolved_database_url)
    try:
        upgrade_database(engine)
        with make_session_factory(engine)() as session:
            accounts.create_user(session=session, username=username, password=password, role="admin")
    finally:
        engine.dispose()

    env = {
        **os.environ,
        "CXR_DATA_DIR": str(data_dir),
        "CXR_ENV": "development",
        "CXR_DATASET_DIR": str(tiny),
        "CXR_TRAIN_MAX_STEPS": str(MAX_STEPS),
        "CXR_TRAIN_THREADS": "1",
        "CXR_WORKER_POLL_SECONDS": "0.5",
        "PYTHONUNBUFFERED": "1",
    }
    # serve stops its worker on the way out
    with spawned(["-m", "app.cli", "serve"], env, data_dir / "serve.log", stop_timeout=60) as url:
        yield LiveServer(url=url, data_dir=data_dir, username=username, password=password)


def job_state(page: Any) -> tuple[float | None, bool]:
    """(the progress bar's value, whether the job ended: report or error shown); (None, False) while
    the page reloads itself at the end of the job."""
    try:
        return page.evaluate(
            """() => {
              const bar = document.getElementById('job-progress');
              const ended = !!(document.getElementById('report') || document.getElementById('job-error'));
              return [bar ? bar.value : null, ended];
            }"""
        )
    except Exception:  # "execution context was destroyed": the reload is under way
        return None, False


def test_admin_trains_watches_progress_reads_report_and_promotes(serve: LiveServer, page: Any, shots: Shots) -> None:
    page.goto(f"{serve.url}/admin/training")
    page.fill("input[name=username]", serve.username)
    page.fill("input[name=password]", serve.password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{serve.url}/admin/training")

    page.select_option("#f-architecture", "cnnx")
    page.select_option("#f-scenario", "s1")
    page.fill("#f-epochs", str(EPOCHS))
    page.fill("#f-batch-size", "4")
    shots.take(page, "training-01-form")
    page.click("#start-job")
    page.wait_for_url(re.compile(r"/admin/training/\d+$"))
    job_id = int(page.url.rsplit("/", 1)[1])
    assert page.inner_text("#job-status") == "queued"

    seen: list[float] = []
    shot_taken = False
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        value, ended = job_state(page)
        if value is not None and (not seen or value != seen[-1]):
            seen.append(value)
        if value is not None and 0.2 < value < 1 and not shot_taken:
            shots.take(page, "training-02-progress")
            shot_taken = True
        if ended:
            break
        page.wait_for_timeout(250)
    page.wait_for_load_state()
    assert page.locator("#report").count(), f"no report: {page.inner_text('#training-job')}\n{seen}"
    assert page.inner_text("#job-status") == "succeeded"
    # The bar moved while the job ran (the page polls once a second; a fast machine trains these 18
    # steps in a few seconds, so how many values it catches varies) and never went backwards; the
    # worker writes each epoch as it ends, and the epoch table shows them all.
    assert any(0 < v < 1 for v in seen), f"the progress bar did not move while the job ran: {seen}"
    assert seen == sorted(seen), f"the progress bar went backwards: {seen}"
    assert page.inner_text("#job-epoch").startswith(f"{EPOCHS} /")
    assert page.locator("#job-epochs tr").count() == EPOCHS

    # The report: paper-style rows for the new and the active model, per source, three charts.
    rows = page.locator("#paper-table tbody tr")
    assert rows.count() == 2
    assert "(new)" in rows.nth(0).inner_text() and "(active)" in rows.nth(1).inner_text()
    assert page.locator("#by-source tbody tr").count() >= 3  # kermany/hannover (new) + the active's
    # lung focus beside sensitivity: one row per true class with films (s1: normal, COVID-19) and "All"
    focus_rows = page.locator("#lung-focus tbody tr")
    assert focus_rows.count() == 3 and focus_rows.nth(2).inner_text().startswith("All")
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete)")
    for chart in ("#chart-curves", "#chart-confusion", "#chart-comparison"):
        assert page.eval_on_selector(chart, "img => img.naturalWidth") > 300, chart
    shots.take(page, "training-03-report", full_page=True)

    # Promote the new version from the report; it becomes the active model.
    page.click("#promote")  # the confirmation page: both models' figures, a reason if the rule needs one
    page.wait_for_selector("#comparison")
    if page.locator("#reason-needed").count():
        page.fill("textarea[name=reason]", "smoke run: checking the promotion path")
    page.click("#activate-submit")
    page.wait_for_selector("#activated")
    page.click("#activate .actions a")  # back to the job page
    page.wait_for_url(f"{serve.url}/admin/training/{job_id}")
    assert "is active" in page.inner_text("#model-active")
    page.goto(f"{serve.url}/admin/audit")
    audit = page.inner_text("#audit")
    assert "model.promote" in audit and "training_job.create" in audit and "training_job.succeeded" in audit
    shots.take(page, "training-04-audit")

    assert page.errors == [], page.errors
    assert page.failed == [], page.failed
