"""The Streamlit entry script (`streamlit run app.py`; `gpuyard ui` does this): sign-in gate and pages."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from gpuyard.entrypoints.ui import session
from gpuyard.entrypoints.ui.remember import ROUTE

# Not "pages/": Streamlit would also take a folder of that name for pages of its own.
PAGES = Path(__file__).resolve().parent / "screens"


def main() -> None:
    st.set_page_config(page_title="gpuyard", page_icon=":material/memory:", layout="wide")
    if not st.session_state.get(session.TOKEN):
        session.restore()
    if not st.session_state.get(session.TOKEN):
        st.navigation([st.Page(PAGES / "signin.py", title="Sign in", icon=":material/login:")]).run()
        return
    pages = [
        st.Page(PAGES / "queue.py", title="Queue", icon=":material/format_list_numbered:", default=True),
        st.Page(PAGES / "running.py", title="Running", icon=":material/play_circle:"),
        st.Page(PAGES / "gpus.py", title="GPUs", icon=":material/memory:"),
        st.Page(PAGES / "submit.py", title="Submit", icon=":material/add_circle:"),
        st.Page(PAGES / "history.py", title="History", icon=":material/history:"),
        st.Page(PAGES / "dead.py", title="Dead letters", icon=":material/report:"),
    ]
    page = st.navigation(pages)
    with st.sidebar:
        user = session.me()
        role = " (admin)" if user.get("is_admin") else ""
        st.markdown(f"Signed in as **{user.get('name', '?')}**{role}")
        st.caption(f"API: {session.api_url()}")
        st.button(
            "Sign out",
            icon=":material/logout:",
            key="app.sign_out",
            on_click=session.sign_out,
            args=("You are signed out.",),
        )
        ticket = st.session_state.pop(session.TICKET, None)
        if ticket:  # the browser loads it once, and keeps the sign-in for its session
            st.html(f'<img src="{ROUTE}?ticket={ticket}" alt="" width="1" height="1">')
    page.run()


if __name__ == "__main__":
    main()
