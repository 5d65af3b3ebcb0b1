"""GPUs: every GPU of every node: the job holding it (flagged when idle), load and memory now and over
the last hour, outside processes."""

from __future__ import annotations

from typing import Any

import streamlit as st

from gpuyard.entrypoints.cli import format as fmt
from gpuyard.entrypoints.ui import listings, session, views
from gpuyard.entrypoints.ui.series import gpu_usage_rows, usage_span
from gpuyard.entrypoints.ui.widgets import clock_chart, live

WINDOW_MINUTES = 60
COLUMNS = {
    "GPU": st.column_config.NumberColumn("GPU", width="small"),
    "util %": st.column_config.ProgressColumn("utilization", min_value=0, max_value=100, format="%d%%"),
    "memory": st.column_config.ProgressColumn("memory", min_value=0.0, max_value=1.0, format="percent"),
    "job": st.column_config.TextColumn("held by", width="medium"),
    "idle since": st.column_config.TextColumn("idle since", width="small", help="Its job is flagged idle"),
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
    me = session.my_name()
    idle = listings.idle_from_gpus(data["gpus"])
    for note in listings.idle_notes(data["gpus"], idle, me=me):
        st.warning(note, icon=":material/warning:")
    st.dataframe(listings.gpu_rows(data["gpus"], me=me, idle=idle), hide_index=True, column_config=COLUMNS)
    _last_hour(data["gpus"])


def _last_hour(gpus: list[dict[str, Any]]) -> None:
    """Every GPU's utilization and memory over the last hour, from the API's series."""
    st.subheader("Over the last hour")
    usage = session.call(lambda c: c.gpu_usage(minutes=WINDOW_MINUTES), what="load the GPUs' last hour")
    if usage is None:
        return
    span = usage_span(usage)
    totals = {(g["node"], g["index"]): g["memory_total_mib"] for g in gpus}
    utilization = gpu_usage_rows(usage, "utilization", memory_total_mib=totals)
    memory = gpu_usage_rows(usage, "memory", memory_total_mib=totals)
    covered = fmt.duration(span.total_seconds())
    st.caption(
        "From the worker's samples, one point per GPU every GPUYARD_USAGE_BUCKET_S (30 s by default): "
        f"{covered} so far, up to an hour."
    )
    if span.total_seconds() < 1:
        st.caption("The charts appear once each GPU has two points.")
        return
    load, used = st.columns(2)
    with load:
        st.markdown("**Utilization %**")
        st.altair_chart(clock_chart(utilization, y="percent", color="GPU", percent=True))
    with used:
        st.markdown("**Memory used %**")
        st.altair_chart(clock_chart(memory, y="percent", color="GPU", percent=True))


if __name__ == "__main__":
    render()
