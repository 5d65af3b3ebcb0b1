"""Small layout helpers shared by the pages."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import altair as alt
import streamlit as st

from gpuyard.entrypoints.ui import session


def live(draw: Callable[[], None]) -> None:
    """Draw now, and again every few seconds (GPUYARD_UI_REFRESH_S) without reloading the page."""
    st.fragment(run_every=session.refresh_s())(draw)()


def clock_chart(
    rows: Sequence[dict[str, Any]],
    *,
    y: str,
    color: str | None = None,
    percent: bool = False,
    height: int = 240,
) -> alt.Chart:
    """`y` over clock time (the rows' datetime `time`), one line per value of `color` if given; a
    percent axis runs from 0 to 100."""
    values = [{**row, "time": row["time"].isoformat()} for row in rows]
    scale = alt.Scale(domain=[0, 100]) if percent else alt.Scale(zero=True)
    encoding: dict[str, Any] = {
        "x": alt.X("time:T", title=None, axis=alt.Axis(format="%H:%M:%S")),
        "y": alt.Y(f"{y}:Q", title=None, scale=scale),
    }
    if color:
        encoding["color"] = alt.Color(f"{color}:N")
    chart: alt.Chart = alt.Chart(alt.InlineData(values=values), height=height).mark_line().encode(**encoding)
    return chart
