"""Small layout helpers shared by the pages."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from gpuyard.entrypoints.ui import session


def live(draw: Callable[[], None]) -> None:
    """Draw now, and again every few seconds (GPUYARD_UI_REFRESH_S) without reloading the page."""
    st.fragment(run_every=session.refresh_s())(draw)()
