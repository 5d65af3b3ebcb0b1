"""Submit: a job's command and needs; then where it stands in line (or that it started), live."""

from __future__ import annotations

import os
from typing import Any

import streamlit as st

from gpuyard.entrypoints.ui import session, views
from gpuyard.entrypoints.ui.app import PAGES
from gpuyard.entrypoints.ui.forms import PRIORITIES, SubmitForm, parse_submission, service_python_env
from gpuyard.entrypoints.ui.widgets import live

LAST = "submit.last_job"
EXAMPLE = "python examples/train_digits.py --epochs 20 --epoch-sleep 0.5"


def render() -> None:
    st.header("Submit a job")
    with st.form("submit.form", enter_to_submit=False):
        command = st.text_input(
            "Command",
            key="submit.command",
            placeholder=EXAMPLE,
            persist_state="session",
            help="Run as given; a line with shell syntax (|, &&, >, $VAR) runs under sh -c.",
        )
        gpus_col, priority_col, limit_col, name_col = st.columns([1, 1, 1, 2])
        gpus = gpus_col.number_input(
            "GPUs", min_value=0, max_value=64, value=1, step=1, key="submit.gpus", persist_state="session"
        )
        levels = PRIORITIES  # who may use urgent is the API's rule: a refusal says so
        priority = priority_col.selectbox(
            "Priority", levels, index=levels.index("normal"), key="submit.priority", persist_state="session"
        )
        time_limit = limit_col.text_input(
            "Time limit",
            key="submit.time_limit",
            placeholder="e.g. 30m, 2h",
            persist_state="session",
            help="The job is stopped (timed out) after this long. Empty: no limit.",
        )
        name = name_col.text_input(
            "Name", key="submit.name", placeholder="default: the program's name", persist_state="session"
        )
        workdir = st.text_input(
            "Working directory",
            value=os.getcwd(),
            key="submit.workdir",
            persist_state="session",
            help="An absolute path on the workstation; the job runs there.",
        )
        env_text = st.text_area(
            "Environment variables",
            key="submit.env",
            placeholder="KEY=VALUE, one per line",
            height=90,
            persist_state="session",
        )
        preemptible = st.checkbox(
            "Preemptible: may start early, in gaps; stopped and put back in its place when a job ahead needs "
            "its GPUs",
            value=False,
            help="It gets SIGTERM, then a grace period to save a checkpoint to $GPUYARD_CHECKPOINT_DIR, "
            "which its next attempt finds. A preemption is not a failure.",
            key="submit.preemptible",
            persist_state="session",
        )
        use_service_python = st.checkbox(
            "Run `python` from gpuyard's own environment (its virtualenv, which has the example's packages)",
            value=True,
            key="submit.service_python",
            persist_state="session",
        )
        submitted = st.form_submit_button("Submit", type="primary", icon=":material/send:")
    if submitted:
        form = SubmitForm(
            command=command or "",
            gpus=gpus,
            priority=str(priority or "normal"),
            name=name or "",
            workdir=workdir or "",
            env_text=env_text or "",
            time_limit=time_limit or "",
            preemptible=bool(preemptible),
        )
        _submit(form, base_env=service_python_env() if use_service_python else {})
    if st.session_state.get(LAST):
        live(_where_it_stands)


def _submit(form: SubmitForm, *, base_env: dict[str, str]) -> None:
    submission, problems = parse_submission(form, base_env=base_env)
    if submission is None:
        st.error(
            "The job was not submitted:\n\n" + "\n".join(f"- {p}" for p in problems), icon=":material/error:"
        )
        return
    job = session.call(lambda c: c.submit(submission.command, **submission.kwargs()), what="submit the job")
    if job is not None:
        st.session_state[LAST] = job["id"]
        st.toast(f"Job {job['id']} submitted.")


def _where_it_stands() -> None:
    job_id = st.session_state[LAST]
    job: dict[str, Any] | None = session.call(lambda c: c.job(job_id), what=f"load job {job_id}")
    if job is None:
        return
    with st.container(border=True):
        st.markdown(f"**Job {job_id} · {job['name']}**")
        if job["state"] == "queued":
            wait = session.call(lambda c: c.wait(job_id), what=f"find where job {job_id} stands")
            if wait is not None:
                st.write(views.wait_text(wait))
            st.page_link(
                PAGES / "queue.py", label="See the whole queue", icon=":material/format_list_numbered:"
            )
        else:
            st.write(views.job_status_text(job))
            if job["state"] in views.RUNNING_STATES:
                st.page_link(
                    PAGES / "running.py", label="Follow it on the Running page", icon=":material/play_circle:"
                )
            else:
                st.page_link(PAGES / "history.py", label="See it in the History", icon=":material/history:")


if __name__ == "__main__":
    render()
