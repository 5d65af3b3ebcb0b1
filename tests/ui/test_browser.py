"""A person in a real browser (Debian's Chromium, driven by Playwright) against `gpuyard ui` and a real
controller and worker: sign in, submit the example training job through the form, watch it wait, run and
succeed, read its output, cancel a waiting job, and read a dead letter. Screenshots of every page go to
test-artifacts/ui/."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuyard.adapters.broker.local import free_port
from gpuyard.entrypoints.ui.launch import wait_healthy
from gpuyard.entrypoints.ui.remember import COOKIE
from tests.support.stack import Stack, held_job, release, running_stack, wait_for

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "ui"
CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> Iterator[Stack]:
    quick = {"GPUYARD_USAGE_BUCKET_S": "1"}  # the GPUs' charts draw from their second point on
    with running_stack(tmp_path_factory.mktemp("ui-browser"), amqp_url, fake_gpus=1, extra_env=quick) as s:
        yield s


@pytest.fixture(scope="module")
def ui_url(stack: Stack) -> Iterator[str]:
    """`gpuyard ui --api URL --port N`, as a person starts it."""
    port = free_port()
    log_path = stack.base / "ui.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpuyard", "ui", "--api", stack.url, "--port", str(port)],
            env=stack.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_healthy(url, timeout_s=60, alive=lambda: proc.poll() is None), log_path.read_text()
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        text = log_path.read_text(errors="replace")
        assert "Traceback" not in text, f"the UI logged a traceback:\n{text[-4000:]}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `scripts/test.sh` installs it (as root), or run "
            "`sudo apt-get install -y chromium` and try again."
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium refuses root without it
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        try:
            yield chromium
        finally:
            chromium.close()


class Person:
    """One browser tab, with the checks that every step makes: no traceback, and a screenshot."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.page.set_default_timeout(TIMEOUT_MS)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def shot(self, name: str, *, showing: str = "") -> None:
        """Save a screenshot once what has the data-testid `showing` (a table, a chart) is drawn."""
        if showing:
            self.page.locator(f'[data-testid="{showing}"]').first.wait_for()
        self.no_traceback()
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def no_traceback(self) -> None:
        text = self.page.locator("body").inner_text()
        assert "Traceback" not in text and 'File "' not in text, f"the page shows a traceback:\n{text[:3000]}"

    def see(self, text: str | re.Pattern[str], timeout_ms: int = TIMEOUT_MS) -> None:
        """Wait until the page shows `text` (the first of several matches)."""
        from playwright.sync_api import expect

        expect(self.page.get_by_text(text).first).to_be_visible(timeout=timeout_ms)

    def go(self, page_name: str) -> None:
        self.page.get_by_role("link", name=page_name, exact=True).click()
        self.page.get_by_role("heading", name=re.compile(page_name)).first.wait_for()

    def type(self, label: str, text: str) -> None:
        self.page.get_by_role("textbox", name=label, exact=True).fill(text)

    def pick(self, label: str, option: str | re.Pattern[str]) -> None:
        self.page.get_by_label(label, exact=True).click()
        self.page.get_by_role("option", name=option).click()


def test_sign_in_submit_watch_and_cancel_in_a_browser(
    stack: Stack, ui_url: str, browser: Any, tmp_path: Path
) -> None:
    me = Person(browser.new_page(viewport={"width": 1400, "height": 1500}))
    me.page.goto(ui_url)
    me.see("Sign in with your token")
    me.shot("01-sign-in")

    me.page.get_by_label("Token").fill("gy_not-my-token")
    me.page.get_by_role("button", name="Sign in").click()
    me.see("This token is not valid")
    me.shot("02-sign-in-bad-token")
    me.page.get_by_label("Token").fill(stack.admin_token)
    me.page.get_by_role("button", name="Sign in").click()
    me.see("Signed in as")
    me.see("Nobody is waiting")
    # The page sets the session cookie by loading a one-time link; once the browser has it, a reload
    # keeps the sign-in for the browser session.
    wait_for(
        lambda: any(c["name"] == COOKIE for c in me.page.context.cookies()),
        what="the browser to get the session cookie",
    )
    me.page.reload()
    me.see("Nobody is waiting")

    with stack.admin() as api:
        blocker = api.submit(held_job(tmp_path), name="blocker")["id"]  # the only GPU is taken
    stack.wait_state(blocker, "running")

    me.go("Submit")
    me.type("Command", "python examples/train_digits.py --epochs 8 --epoch-sleep 0.4")
    me.type("Name", "digits-ui")
    me.type("Working directory", str(ROOT))
    me.page.get_by_role("button", name="Submit").click()
    me.see(re.compile(r"Job \d+ is next in line\."))
    me.see("Why: waiting for 1 GPU")
    me.shot("03-submit-waiting")
    with stack.admin() as api:
        (job,) = api.jobs(name="digits-ui")["data"]
        assert job["state"] == "queued" and job["command"][:2] == ["python", "examples/train_digits.py"]
        doomed = api.submit("true", name="to-cancel")["id"]

    me.go("Queue")
    me.see("2 jobs waiting; 2 of them yours")
    me.shot("04-queue", showing="stTable")
    me.pick("Job", re.compile(rf"^{doomed} · to-cancel"))
    me.page.get_by_role("button", name="Cancel").click()
    me.see(f"Job {doomed} cancelled.")
    assert stack.job(doomed)["state"] == "cancelled"
    me.see("1 job waiting")
    me.shot("05-queue-after-cancel", showing="stTable")

    release(tmp_path, blocker)
    me.go("Running")
    me.see(f"Job {job['id']} · digits-ui", timeout_ms=60_000)
    me.see(re.compile(r"\(step [3-8] of 8\)"), timeout_ms=60_000)  # a few reports: a few points
    me.see("device=cpu", timeout_ms=60_000)  # the live output
    me.page.locator('[data-testid="stVegaLiteChart"]').nth(2).wait_for()  # its curves and its GPU's use
    me.shot("06-running", showing="stVegaLiteChart")

    me.go("GPUs")
    me.see("GPUs in use by gpuyard jobs")
    me.see("so far, up to an hour")
    me.page.locator('[data-testid="stDataFrame"] canvas').first.wait_for()
    me.shot("07-gpus", showing="stVegaLiteChart")  # drawn from the second sample on

    stack.wait_state(job["id"], "succeeded", timeout_s=120)
    me.go("History")
    me.pick("Job", re.compile(rf"^{job['id']} · digits-ui"))
    me.see(f"Job {job['id']} succeeded")
    me.see("device=cpu")
    me.see("epoch 8/8")
    me.shot("08-history-output", showing="stDataFrame")

    with stack.admin() as api:  # one failure it asked to retry, and no attempt left: a dead letter
        doomed = api.submit(
            "echo out of luck; exit 3", name="doomed", retry_on=["exit_nonzero"], max_attempts=1
        )
    stack.wait_state(doomed["id"], "failed")
    me.go("Dead letters")
    me.see("1 job waits for a decision")
    me.page.get_by_text(re.compile(rf"^Dead letter \d+ · job {doomed['id']} ")).click()  # open its expander
    me.see("out of luck")
    from playwright.sync_api import expect

    expect(me.page.get_by_role("button", name="Requeue")).to_be_in_viewport(ratio=1)  # opened all the way
    me.shot("09-dead-letters")

    me.page.get_by_role("button", name="Sign out").click()
    me.see("Sign in with your token")
    me.page.reload()
    me.see("Sign in with your token")
