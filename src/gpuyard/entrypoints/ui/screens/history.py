"""History: finished jobs, filtered and paged on the server; one job's attempts and full output; requeue a
failed or timed-out job, or run another one again as a copy."""

from __future__ import annotations

from typing import Any

import streamlit as st

from gpuyard.client import Client
from gpuyard.entrypoints.ui import listings, session, views
from gpuyard.entrypoints.ui.forms import copy_submission
from gpuyard.entrypoints.ui.series import read_all
from gpuyard.entrypoints.ui.widgets import live

PAGE_SIZE = 50
SHOWN_LOG_CHARS = 200_000
FILTERS = "history.filters"
CURSORS = "history.cursors"  # the cursor of every page up to the one shown: [None, c2, c3, ...]
PAGE = "history.page"  # the jobs of the page shown, by id
LOGS = "history.logs"
COLUMNS = {
    "job": st.column_config.NumberColumn("job", width="small", format="%d"),
    "exit": st.column_config.NumberColumn("exit", width="small"),
    "attempts": st.column_config.TextColumn("attempts", width="small"),
}


def render() -> None:
    st.header("History")
    _filters()
    live(_table)
    st.fragment(_details)()


def _filters() -> None:
    admin = session.is_admin()
    with st.form("history.filter_form", border=False):
        name_col, state_col, user_col, days_col = st.columns(4)
        name = name_col.text_input("Name contains", key="history.name", persist_state="session")
        states = state_col.multiselect(
            "State",
            views.FINAL_STATES,
            key="history.states",
            persist_state="session",
            format_func=lambda s: views.STATE_WORDS[s],
            placeholder="any",
        )
        user = user_col.text_input(
            "User",
            key="history.user",
            persist_state="session",
            disabled=not admin,
            placeholder="everyone" if admin else f"{session.my_name()} (your jobs)",
        )
        days = days_col.date_input("Submitted between", value=[], key="history.days", persist_state="session")
        applied = st.form_submit_button("Apply filters", icon=":material/filter_alt:")
    if applied or FILTERS not in st.session_state:
        chosen = list(days) if isinstance(days, tuple | list) else [days] if days else []
        after, before = listings.day_bounds(chosen[0], chosen[-1]) if chosen else (None, None)
        st.session_state[FILTERS] = {
            "name": (name or "").strip() or None,
            "states": list(states) or list(views.FINAL_STATES),
            "user": ((user or "").strip() or None) if admin else None,
            "submitted_after": after,
            "submitted_before": before,
        }
        st.session_state[CURSORS] = [None]


def _table() -> None:
    filters: dict[str, Any] = st.session_state[FILTERS]
    cursors: list[str | None] = st.session_state[CURSORS]
    page = session.call(
        lambda c: c.jobs(**filters, cursor=cursors[-1], limit=PAGE_SIZE), what="load the history"
    )
    if page is None:
        return
    jobs: list[dict[str, Any]] = page["data"]
    shown = {j["id"]: j for j in jobs}
    before = st.session_state.get(PAGE)
    st.session_state[PAGE] = shown
    if before is not None and list(before) != list(shown):
        st.rerun()  # the job picker below lists this page's jobs: draw the whole page again
    session.show_notice()
    if jobs:
        st.dataframe(
            listings.history_rows(jobs, me=session.my_name()), hide_index=True, column_config=COLUMNS
        )
    else:
        st.info("No finished job matches these filters." if len(cursors) == 1 else "No more jobs.")
    newer, where, older = st.columns([1, 2, 1])
    if len(cursors) > 1:
        newer.button("← Newer", key="history.newer", on_click=_newer, args=(cursors,))
    where.caption(f"Page {len(cursors)} · {PAGE_SIZE} jobs a page, newest first")
    if page["next_cursor"]:
        older.button("Older →", key="history.older", on_click=cursors.append, args=(page["next_cursor"],))


def _newer(cursors: list[str | None]) -> None:
    cursors.pop()


def _details() -> None:
    jobs: dict[int, dict[str, Any]] = st.session_state.get(PAGE) or {}
    if not jobs:
        return
    session.show_notice()
    st.subheader("A job's details and output")
    job_id = st.selectbox(
        "Job",
        list(jobs),
        key="history.open",
        format_func=lambda i: (
            f"{i} · {jobs[i]['name']} ({jobs[i]['user']}, {views.STATE_WORDS[jobs[i]['state']]})"
        ),
    )
    if job_id is None:
        return
    job = session.call(lambda c: c.job(job_id), what=f"load job {job_id}")
    if job is None:
        return
    _summary(job)
    if listings.may_requeue(job):
        st.button(
            "Requeue",
            key="history.requeue",
            icon=":material/replay:",
            help="The same job goes back in line, with a fresh budget of attempts.",
            on_click=_requeue,
            args=(job["id"],),
        )
    elif job["state"] in views.FINAL_STATES:
        st.button(
            "Run again (submit a copy as a new job)",
            key="history.run_again",
            icon=":material/content_copy:",
            on_click=_run_again,
            args=(job,),
        )
    _output(job)


def _summary(job: dict[str, Any]) -> None:
    command = " ".join(job["command"])
    st.markdown(f"**Job {job['id']} · {job['name']}** · {job['user']} · {views.job_status_text(job)}")
    st.code(command, language="bash", wrap_lines=True)
    limit = f"{job['time_limit_s']} s" if job["time_limit_s"] else "none"
    st.caption(
        f"{job['gpus']} GPU(s) · priority {job['priority']} · time limit {limit} · "
        f"failure class {job['failure_class'] or '-'} · folder {job['workdir'] or '-'}"
    )
    st.caption(listings.attempts_text(job, now=views.utc_now()))
    if job.get("error"):
        st.warning(job["error"])
    if job.get("attempts"):
        st.dataframe(listings.attempt_rows(job["attempts"]), hide_index=True)


def _requeue(job_id: int) -> None:
    answer: dict[str, Any] = {}

    def send(c: Client) -> None:
        answer.update(c.requeue(job_id))

    if session.run_action(send, what=f"requeue job {job_id}"):
        st.session_state[session.NOTICE] = ("success", listings.requeued_text(answer))


def _run_again(job: dict[str, Any]) -> None:
    submission = copy_submission(job)
    new: dict[str, Any] = {}

    def submit(c: Client) -> None:
        new.update(c.submit(submission.command, **submission.kwargs()))

    if session.run_action(submit, what=f"run job {job['id']} again"):
        stands = views.wait_text(new) if new["state"] == "queued" else "It is starting now."
        st.session_state[session.NOTICE] = (
            "success",
            f"Job {job['id']} runs again as job {new['id']}. {stands}",
        )


def _output(job: dict[str, Any]) -> None:
    key = (job["id"], job["attempt"])
    logs: dict[tuple[int, int], tuple[str, bool]] = st.session_state.setdefault(LOGS, {})
    if key not in logs or job["state"] not in views.FINAL_STATES:
        try:
            logs[key] = read_all(lambda offset: session.client().logs(job["id"], offset=offset))
        except Exception as e:  # noqa: BLE001 - shown in words
            st.error(f"Could not read the output of job {job['id']}. {session.problem(e)}")
            return
        while len(logs) > 8:
            del logs[next(iter(logs))]
    text, whole = logs[key]
    st.markdown(f"**Output** of attempt {job['attempt']}" if job["attempt"] else "**Output**")
    if not text:
        st.caption("The job wrote no output.")
        return
    shown = text[-SHOWN_LOG_CHARS:]
    if len(shown) < len(text) or not whole:
        st.caption(f"Showing the last {len(shown):,} characters; the download has all that was read.")
    st.code(shown, language=None, height=420)
    st.download_button(
        "Download the output",
        text,
        file_name=f"job-{job['id']}.log",
        key="history.download",
        icon=":material/download:",
    )


if __name__ == "__main__":
    render()
