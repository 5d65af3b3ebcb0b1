"""Running: each running job with progress and estimated end; follow one's log tail, its metric curves and
its GPUs' use over time (the API's series of its whole run)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import streamlit as st

from gpuyard.entrypoints.ui import cards, session, views
from gpuyard.entrypoints.ui.series import LogTail, job_usage_rows, metric_names, metric_points
from gpuyard.entrypoints.ui.widgets import clock_chart, live

TAILS = "running.tails"


def render() -> None:
    st.header("Running")
    st.caption("Jobs holding GPUs now, yours first. The page refreshes by itself.")
    live(_running)


def _running() -> None:
    session.show_notice()
    page = session.call(
        lambda c: c.jobs(states=views.RUNNING_STATES, limit=500), what="load the running jobs"
    )
    if page is None:
        return
    now = views.utc_now()
    me = session.my_name()
    jobs: list[dict[str, Any]] = sorted(page["data"], key=lambda j: (j["user"] != me, j["id"]))
    tails: dict[int, LogTail] = st.session_state.setdefault(TAILS, {})
    for gone in [i for i in tails if i not in {j["id"] for j in jobs}]:  # ended: let go
        tails.pop(gone, None)
    if not jobs:
        st.info("No job is running." if session.is_admin() else "No job of yours is running.")
    for job in jobs:
        _card(job, now=now)
    if not session.is_admin():
        _others({j["id"] for j in jobs})
    if jobs:
        _follow(jobs)


def _card(job: dict[str, Any], *, now: datetime) -> None:
    view = cards.running_view(job, now=now)
    with st.container(border=True):
        head, stop = st.columns([6, 1], vertical_alignment="center")
        owner = "you" if view.owner == session.my_name() else view.owner
        head.markdown(f"**{view.title}** · {owner} · {view.gpus} · elapsed {view.elapsed} · ends {view.ends}")
        if (
            views.may_act(job, me=session.my_name(), is_admin=session.is_admin())
            and not job["cancel_requested"]
        ):
            job_id = view.job_id
            stop.button(
                "Cancel",
                key=f"running.cancel.{job_id}",
                icon=":material/stop_circle:",
                on_click=session.act,
                args=(lambda c: c.cancel(job_id),),
                kwargs={
                    "done": f"Job {job_id}: stopping (cancel sent to its worker).",
                    "what": f"cancel job {job_id}",
                },
            )
        elif job["cancel_requested"]:
            stop.caption("stopping…")
        _state(view)


def _state(view: cards.RunningView) -> None:
    """Below a card's head: the idle flag, progress, metrics and GPU use, and its TensorBoard run."""
    if view.idle:
        st.badge(
            view.idle,
            icon=":material/warning:",
            color="orange",
            help="None of its GPUs has been busy for a while (GPUYARD_IDLE_GPU_AFTER_S, 30 min by default). "
            "If it no longer needs them, cancel it: others could use them.",
        )
    st.progress(view.progress or 0.0, text=view.progress_text)
    said = [" · ".join(f"{k} {_short(v)}" for k, v in view.metrics.items()), view.usage]
    if any(said):
        st.caption(" · ".join(s for s in said if s))
    if view.tensorboard_url:
        st.link_button(
            "TensorBoard", view.tensorboard_url, icon=":material/monitoring:", help=view.tensorboard_text
        )
    elif view.tensorboard_text:
        st.caption(view.tensorboard_text)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _others(shown: set[int]) -> None:
    gpus = session.call(lambda c: c.gpus(), what="load who holds the GPUs")
    if gpus is None:
        return
    rows = cards.others_running(gpus["gpus"], shown=shown)
    if rows:
        st.subheader("Other people's running jobs")
        st.dataframe(rows, hide_index=True)


def _follow(jobs: list[dict[str, Any]]) -> None:
    st.subheader("Follow a job")
    by_id = {j["id"]: j for j in jobs}
    job_id = st.selectbox(
        "Job",
        list(by_id),
        format_func=lambda i: f"{i} · {by_id[i]['name']} ({by_id[i]['user']})",
        key="running.follow",
    )
    if job_id is None or job_id not in by_id:
        return
    series = session.call(lambda c: c.job_series(job_id), what=f"load the series of job {job_id}")
    logs, curves = st.columns(2)
    with logs:
        st.markdown("**Output** (last lines)")
        tails: dict[int, LogTail] = st.session_state.setdefault(TAILS, {})
        tail = tails.setdefault(job_id, LogTail())
        try:
            tail.catch_up(lambda offset: session.client().logs(job_id, offset=offset))
        except Exception as e:  # noqa: BLE001 - shown in words
            st.error(f"Could not read the output of job {job_id}. {session.problem(e)}")
        st.code(tail.text or "(no output yet)", language=None, height=360)
    with curves:
        st.markdown("**Metrics over steps** (as reported with gpuyard.report)")
        if series is not None:
            _metrics(series, by_id[job_id])
    if series is not None:
        _gpu_use(series)


def _metrics(series: dict[str, Any], job: dict[str, Any]) -> None:
    points = metric_points(series, job=job)
    names = metric_names(points)
    if len(points) >= 2 and names:
        st.line_chart(points, x="step", y=names, height=360)
    elif names:
        st.caption("The curves appear with the job's next report of a new step.")
    else:
        st.caption("No metrics reported yet: a job reports them with gpuyard.report(step=, total=, loss=…).")


def _gpu_use(series: dict[str, Any]) -> None:
    """The followed job's GPUs over its run: utilization and the memory its processes hold."""
    rows = job_usage_rows(series)
    st.markdown(f"**Its GPUs over time** (attempt {series['attempt']})")
    if len(rows) < 2:
        st.caption(
            "The charts appear once two usage samples are in: the worker's GPU samples are kept as one "
            "point per GPUYARD_USAGE_BUCKET_S (30 s by default)."
        )
        return
    load, memory = st.columns(2)
    with load:
        st.caption("Utilization % (mean over its GPUs)")
        st.altair_chart(clock_chart(rows, y="utilization", percent=True))
    with memory:
        st.caption("Memory its processes hold, MiB (summed over its GPUs)")
        st.altair_chart(clock_chart(rows, y="memory"))


if __name__ == "__main__":
    render()
