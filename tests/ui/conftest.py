"""The UI's live tests: a real controller and worker (tests.support.stack) per module, pages driven by
Streamlit's AppTest in this process, and the browser test through Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from gpuyard.entrypoints.ui import session
from gpuyard.entrypoints.ui.launch import APP
from tests.support.stack import Stack

PAGE_TIMEOUT_S = 30


@pytest.fixture(autouse=True)
def fresh_ui_config(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The UI reads its settings once per process: every test starts from the defaults."""
    for name in ("GPUYARD_UI_API_URL", "GPUYARD_UI_API_TIMEOUT_S", "GPUYARD_URL"):
        monkeypatch.delenv(name, raising=False)
    session.config.cache_clear()
    yield
    session.config.cache_clear()


def app(url: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=PAGE_TIMEOUT_S)
    at.session_state[session.API_URL] = url
    return at


def open_page(stack: Stack, token: str, page: str | None = None) -> AppTest:
    """The app as someone signed in with `token` sees it, on `page` (e.g. "queue.py")."""
    with stack.client(token) as c:
        user = c.me()
    at = app(stack.url)
    at.session_state[session.TOKEN] = token
    at.session_state[session.USER] = user
    at.run()
    if page:
        at.switch_page(f"screens/{page}").run()
    assert_no_exception(at)
    return at


def assert_no_exception(at: AppTest) -> None:
    assert not at.exception, f"the page shows an exception: {[e.value for e in at.exception]}"


def texts(at: AppTest) -> str:
    """Everything the page says in words: markdown, captions, alerts, code and the values of its tables."""
    parts: list[Any] = []
    for kind in ("markdown", "caption", "error", "warning", "info", "success", "code", "header", "subheader"):
        parts.extend(e.value for e in at.get(kind))
    for frame in [*at.dataframe, *at.table]:
        parts.append(frame.value.to_string())
    return "\n".join(str(p) for p in parts)


def charts(at: AppTest) -> list[Any]:
    """The data of every chart on the page, as pandas DataFrames (one per dataset)."""
    from streamlit import dataframe_util

    return [
        dataframe_util.convert_arrow_bytes_to_pandas_df(d.data.data)
        for chart in at.get("vega_lite_chart")
        for d in chart.proto.datasets
    ]


def errors(at: AppTest) -> str:
    return "\n".join(e.value for e in at.error)


@pytest.fixture(scope="module")
def alice(stack: Stack) -> str:
    with stack.admin() as c:
        return str(c.add_user("alice")["token"])


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("release")
