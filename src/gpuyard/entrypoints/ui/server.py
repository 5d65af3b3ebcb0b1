"""The UI server that `gpuyard ui` runs (`streamlit run server.py`): the Streamlit app of app.py, plus the
route that keeps a sign-in for the browser session (remember.py)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from starlette.routing import Route

from gpuyard.entrypoints.ui.remember import ROUTE, remember_route

app = st.App(
    str(Path(__file__).resolve().parent / "app.py"),
    routes=[Route(ROUTE, remember_route, methods=["GET"])],
)
