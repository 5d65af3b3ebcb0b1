"""A history of 10,000 finished jobs: the API pages it on the server and the History page stays quick.
The timings are printed (pytest -s) and written to test-artifacts/ui/history-10k.txt."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.stack import Stack, running_stack
from tests.ui.conftest import assert_no_exception, open_page

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
JOBS = 10_000
FINAL = ("succeeded", "failed", "cancelled", "timed_out")
T = TypeVar("T")
# Generous bounds for a loaded two-core machine; the printed timings are the measurement.
API_PAGE_S = 1.0
UI_PAGE_S = 5.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("ui-scale"), amqp_url, fake_gpus=1) as s:
        yield s


@pytest.fixture(scope="module")
def carol(stack: Stack) -> str:
    """A user with 10,000 finished jobs over the last two weeks, written straight into the database."""
    from sqlalchemy import create_engine, insert

    from gpuyard.adapters.db.tables import jobs

    with stack.admin() as c:
        token = str(c.add_user("carol")["token"])
    with stack.client(token) as c:
        user_id = c.me()["id"]
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    for i in range(JOBS):
        submitted = now - timedelta(days=14) + timedelta(seconds=i * 14 * 86400 / JOBS)
        state = FINAL[i % 4]
        rows.append(
            {
                "user_id": user_id,
                "name": "needle" if i % 1000 == 7 else f"sweep-{i % 100}",
                "argv": ["python", "train.py", f"--seed={i}"],
                "gpus": 1 + i % 2,
                "priority": "normal",
                "priority_rank": 1,
                "workdir": "/tmp",
                "env": {},
                "time_limit_s": None,
                "state": state,
                "attempt": 1,
                "submitted_at": submitted,
                "started_at": submitted + timedelta(seconds=5),
                "finished_at": submitted + timedelta(seconds=65),
                "exit_code": 0 if state == "succeeded" else 1,
                "failure_class": None
                if state == "succeeded"
                else {"failed": "exit_nonzero"}.get(state, state),
                "updated_at": submitted,
            }
        )
    engine = create_engine(f"sqlite:///{stack.data_dir / 'gpuyard.db'}", connect_args={"timeout": 30})
    with engine.begin() as conn:
        conn.execute(insert(jobs), rows)
    engine.dispose()
    return token


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def test_ten_thousand_jobs_page_quickly(stack: Stack, carol: str) -> None:
    report: list[str] = []
    with stack.client(carol) as c:
        c.jobs(states=FINAL, limit=50)  # warm up
        first, first_s = timed(lambda: c.jobs(states=FINAL, limit=50))
        assert len(first["data"]) == 50 and first["next_cursor"]
        deep, deep_s = timed(
            lambda: c.jobs(states=FINAL, limit=50, cursor=str(first["data"][0]["id"] - 5000))
        )
        assert len(deep["data"]) == 50
        needles, name_s = timed(lambda: c.jobs(states=FINAL, limit=50, name="needle"))
        assert len(needles["data"]) == 10
        since = datetime.now(UTC) - timedelta(days=2)
        recent, date_s = timed(lambda: c.jobs(states=FINAL, limit=500, submitted_after=since))
        assert 1400 < len(recent["data"]) or recent["next_cursor"]
    for what, seconds in [
        ("API: first page of 50", first_s),
        ("API: a page 5,000 jobs deep", deep_s),
        ("API: name filter (10 of 10,000)", name_s),
        ("API: date filter, 500 rows", date_s),
    ]:
        report.append(f"{what:40s} {seconds * 1000:7.1f} ms")
        assert seconds < API_PAGE_S, f"{what} took {seconds:.2f} s"

    at, open_s = timed(lambda: open_page(stack, carol, "history.py"))
    assert len(at.dataframe[0].value) == 50
    older = [b for b in at.button if b.label == "Older →"][0]
    older.click()
    _, older_s = timed(at.run)
    assert_no_exception(at)
    assert any("Page 2" in c.value for c in at.caption)
    at.text_input(key="history.name").input("needle")
    [b for b in at.button if b.label == "Apply filters"][0].click()
    _, filter_s = timed(at.run)
    assert len(at.dataframe[0].value) == 10
    for what, seconds in [
        ("UI: open History (sign-in state, 1st page)", open_s),
        ("UI: Older → (page 2)", older_s),
        ("UI: name filter", filter_s),
    ]:
        report.append(f"{what:40s} {seconds * 1000:7.1f} ms")
        assert seconds < UI_PAGE_S, f"{what} took {seconds:.2f} s"
    text = f"History with {JOBS:,} finished jobs (SQLite), one user:\n" + "\n".join(report) + "\n"
    print("\n" + text)
    artifacts = ROOT / "test-artifacts" / "ui"
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / "history-10k.txt").write_text(text)
