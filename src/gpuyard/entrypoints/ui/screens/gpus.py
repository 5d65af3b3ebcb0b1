"""GPUs: every GPU of every node: the job holding it, load and memory now and lately, outside processes."""

from __future__ import annotations

from typing import Any

import altair as alt
import streamlit as st

from gpuyard.entrypoints.cli import format as fmt
from gpuyard.entrypoints.ui import listings, session, views
from gpuyard.entrypoints.ui.series import GpuSamples
from gpuyard.entrypoints.ui.widgets import live

SAMPLES = "gpus.samples"
COLUMNS = {
    "GPU": st.column_config.NumberColumn("GPU", width="small"),
    "util %": st.column_config.ProgressColumn("utilization", min_value=0, max_value=100, format="%d%%"),
    "memory": st.column_config.ProgressColumn("memory", min_value=0.0, max_value=1.0, format="percent"),
    "job": st.column_config.TextColumn("held by", width="medium"),
}


def render() -> None:
    st.header("GPUs")
    st.caption("Every GPU of every node. The page refreshes by itself.")
    live(_gpus)


def _gpus() -> None:
    data = session.call(lambda c: c.gpus(), what="load the GPUs")
    if data is None:
        return
    now = views.utc_now()
    st.write(listings.gpu_summary(data))
    for note in listings.node_notes(data["nodes"], now=now):
        st.warning(note, icon=":material/cloud_off:")
    if not data["gpus"]:
        return
    st.dataframe(
        listings.gpu_rows(data["gpus"], me=session.my_name()), hide_index=True, column_config=COLUMNS
    )
    samples: GpuSamples = st.session_state.setdefault(SAMPLES, GpuSamples())
    samples.observe(data["gpus"], now=now)
    span = fmt.duration(samples.span().total_seconds())
    st.subheader("Over the last hour")
    st.caption(f"What this page has seen since it was opened ({span} so far, up to an hour).")
    if samples.span().total_seconds() < 1:
        st.caption("The charts fill in as the page refreshes.")
        return
    load, memory = st.columns(2)
    with load:
        st.markdown("**Utilization %**")
        st.altair_chart(_chart(samples.rows("utilization")))
    with memory:
        st.markdown("**Memory used %**")
        st.altair_chart(_chart(samples.rows("memory")))


def _chart(rows: list[dict[str, Any]]) -> alt.Chart:
    """Percent over clock time, one line a GPU."""
    values = [{**row, "time": row["time"].isoformat()} for row in rows]
    chart: alt.Chart = (
        alt.Chart(alt.InlineData(values=values), height=240)
        .mark_line()
        .encode(
            x=alt.X("time:T", title=None, axis=alt.Axis(format="%H:%M:%S")),
            y=alt.Y("percent:Q", title=None, scale=alt.Scale(domain=[0, 100])),
            color=alt.Color("GPU:N"),
        )
    )
    return chart


if __name__ == "__main__":
    render()
