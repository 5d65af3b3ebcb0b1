"""Sign in with a token; it is kept for this browser session."""

from __future__ import annotations

import streamlit as st

from gpuyard.client import ApiError, Client
from gpuyard.entrypoints.ui import session


def render() -> None:
    st.title("gpuyard")
    st.write(
        "Training jobs on the shared GPU workstation. Sign in with your token to submit and follow jobs."
    )
    session.show_notice()
    _api_status()
    with st.form("signin.form", enter_to_submit=True):
        token = st.text_input("Token", type="password", key="signin.token", placeholder="gy_…")
        submitted = st.form_submit_button("Sign in", type="primary")
    st.caption(
        "Your token starts with gy_. The person who started gpuyard finds the admin token in "
        "DATA_DIR/admin.token; everyone else gets theirs from an admin (`gpuyard admin user add NAME`)."
    )
    if submitted:
        _sign_in((token or "").strip())


def _api_status() -> None:
    """Say before anyone types a token when the API is down, or up without its broker."""
    try:
        with Client(session.api_url(), None, timeout_s=session.config().timeout_s) as probe:
            health = probe.ready()
    except Exception as e:  # noqa: BLE001 - said in words
        st.warning(session.problem(e), icon=":material/cloud_off:")
        return
    problems = [f"{name}: {state}" for name, state in (health.get("checks") or {}).items() if state != "ok"]
    if problems:
        st.info(
            f"gpuyard answers, but not everything is ready ({'; '.join(problems)}). You can sign in; "
            "jobs are accepted and start once it is.",
            icon=":material/info:",
        )


def _sign_in(token: str) -> None:
    if not token:
        st.error("Paste your token into the field above (it starts with gy_), then press Sign in.")
        return
    try:
        user = session.sign_in(token)
    except ApiError as e:
        st.error(f"Could not sign in. {session.problem(e)}", icon=":material/error:")
        return
    except Exception as e:  # noqa: BLE001 - a message, never a traceback
        st.error(f"Could not sign in. {session.problem(e)}", icon=":material/error:")
        return
    st.session_state.pop("signin.token", None)
    st.toast(f"Signed in as {user['name']}.")
    st.rerun()


if __name__ == "__main__":
    render()
