"""The browser session: which API, whose token, and API calls that end in a message, never a traceback."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

import streamlit as st

from gpuyard.client import ApiError, Client, discover
from gpuyard.entrypoints.ui.remember import BOOK, COOKIE
from gpuyard.entrypoints.ui.views import describe_error

log = logging.getLogger(__name__)
T = TypeVar("T")

API_URL = "gpuyard.api_url"
TOKEN = "gpuyard.token"
USER = "gpuyard.user"
NOTICE = "gpuyard.notice"
SID = "gpuyard.sid"  # this browser session's id in remember.BOOK
TICKET = "gpuyard.ticket"  # a one-time link that sets the session cookie, still to be loaded


@dataclass(frozen=True)
class UiConfig:
    api_url: str
    refresh_s: float
    timeout_s: float


@cache
def config() -> UiConfig:
    """Read once per process from the settings that `gpuyard ui` passes on (GPUYARD_UI_*)."""
    from gpuyard.settings import Settings

    settings = Settings()
    api_url = settings.ui_api_url or discover()[0]  # GPUYARD_URL, else the data dir's api_url
    return UiConfig(
        api_url=api_url.rstrip("/"), refresh_s=settings.ui_refresh_s, timeout_s=settings.ui_api_timeout_s
    )


def api_url() -> str:
    url: str = st.session_state.get(API_URL) or config().api_url
    return url


def refresh_s() -> float:
    return config().refresh_s


def client(token: str | None = None) -> Client:
    """A client for this session's token (or the one given), kept for the session."""
    token = token if token is not None else st.session_state.get(TOKEN)
    key = ("gpuyard.client", api_url(), token)
    cached = st.session_state.get("gpuyard.client")
    if cached is None or cached[0] != key:
        if cached is not None:
            cached[1].close()
        cached = (key, Client(api_url(), token, timeout_s=config().timeout_s))
        st.session_state["gpuyard.client"] = cached
    result: Client = cached[1]
    return result


def me() -> dict[str, Any]:
    user: dict[str, Any] = st.session_state.get(USER) or {}
    return user


def is_admin() -> bool:
    return bool(me().get("is_admin"))


def my_name() -> str:
    return str(me().get("name", ""))


def sign_in(token: str, *, remember: bool = True) -> dict[str, Any]:
    """Check the token with the API; on success it is kept for this browser session (a reload included,
    see remember.py). Raises ApiError."""
    with Client(api_url(), token, timeout_s=config().timeout_s) as probe:
        user = probe.me()
    st.session_state[TOKEN] = token
    st.session_state[USER] = user
    if remember:
        st.session_state[SID], st.session_state[TICKET] = BOOK.issue(token)
    return user


def restore() -> None:
    """Sign in again with the token this browser's session cookie stands for, if any."""
    sid = _cookie(COOKIE)
    token = BOOK.token(sid) if sid else None
    if not sid or not token:
        return
    try:
        sign_in(token, remember=False)
    except Exception as e:  # noqa: BLE001 - the sign-in page says why
        if isinstance(e, ApiError) and e.status == 401:
            BOOK.forget(sid)
        st.session_state[NOTICE] = ("error", f"Could not sign you in again. {problem(e)}")
        return
    st.session_state[SID] = sid


def _cookie(name: str) -> str | None:
    try:
        return st.context.cookies.to_dict().get(name)
    except Exception:  # noqa: BLE001 - no browser (a test run): no cookies
        return None


def sign_out(message: str | None = None) -> None:
    """Forget the sign-in and everything the pages kept for it (filters, series, forms), but not the API."""
    sid = st.session_state.get(SID)
    if sid:
        BOOK.forget(sid)
    cached = st.session_state.get("gpuyard.client")
    if cached is not None:
        cached[1].close()
    url = st.session_state.get(API_URL)
    for key in list(st.session_state.keys()):
        del st.session_state[key]
    if url:
        st.session_state[API_URL] = url
    if message:
        st.session_state[NOTICE] = message


def problem(error: BaseException) -> str:
    return describe_error(error, api_url=api_url(), timeout_s=config().timeout_s)


def call(fn: Callable[[Client], T], *, what: str) -> T | None:
    """Run one API call. An error is shown on the page in words (what happened, what to do) and the call
    answers None; a token that stops being valid signs the session out."""
    try:
        return fn(client())
    except ApiError as e:
        if e.status == 401 and st.session_state.get(TOKEN):
            sign_out("Your token is no longer accepted (it was removed or changed): sign in again.")
            st.rerun()
        st.error(f"Could not {what}. {problem(e)}", icon=":material/error:")
    except Exception as e:  # noqa: BLE001 - a page shows a message, never a traceback
        log.exception("UI: could not %s", what)
        st.error(f"Could not {what}. {problem(e)}", icon=":material/error:")
    return None


def act(fn: Callable[[Client], Any], *, done: str, what: str) -> None:
    """An action (cancel, hold, ...), as a button's on_click: its outcome shows on the next run."""
    if run_action(fn, what=what):
        st.session_state[NOTICE] = ("success", done)


def run_action(fn: Callable[[Client], Any], *, what: str) -> bool:
    """Run an action; when it fails, say why on the next run of the page and answer False."""
    try:
        fn(client())
    except Exception as e:  # noqa: BLE001 - shown in words
        if not isinstance(e, ApiError):
            log.exception("UI: could not %s", what)
        st.session_state[NOTICE] = ("error", f"Could not {what}. {problem(e)}")
        return False
    return True


def show_notice() -> None:
    notice = st.session_state.pop(NOTICE, None)
    if isinstance(notice, tuple):
        kind, text = notice
        (st.success if kind == "success" else st.error)(text)
    elif isinstance(notice, str):
        st.info(notice)
