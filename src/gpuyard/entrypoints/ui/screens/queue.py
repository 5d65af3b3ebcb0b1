"""Queue: everyone's waiting jobs in order, with estimated start and why; cancel, hold, release, priority."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import streamlit as st

from gpuyard.entrypoints.ui import session, views
from gpuyard.entrypoints.ui.forms import PRIORITIES
from gpuyard.entrypoints.ui.widgets import live


def render() -> None:
    st.header("Queue")
    st.caption("Everyone's waiting jobs, in the order they will start. The page refreshes by itself.")
    live(_queue)


def _queue() -> None:
    session.show_notice()
    data = session.call(lambda c: c.queue(), what="load the queue")
    if data is None:
        return
    entries: list[dict[str, Any]] = data["data"]
    me = session.my_name()
    st.write(views.queue_summary(entries, me=me))
    if entries:
        st.table(views.queue_rows(entries, me=me), border="horizontal", hide_index=True)
    _manage([q for q in entries if views.may_act(q, me=me, is_admin=session.is_admin())])


def _manage(entries: list[dict[str, Any]]) -> None:
    if not entries:
        return
    st.subheader("Manage a waiting job")
    by_id = {q["id"]: q for q in entries}
    pick, cancel, hold, priority, set_priority = st.columns([4, 1, 1, 2, 1], vertical_alignment="bottom")
    job_id = pick.selectbox(
        "Job", list(by_id), format_func=lambda i: views.job_choice(by_id[i]), key="queue.job"
    )
    if job_id is None or job_id not in by_id:
        return
    job = by_id[job_id]
    cancel.button(
        "Cancel",
        key="queue.cancel",
        icon=":material/cancel:",
        on_click=session.act,
        args=(lambda c: c.cancel(job_id),),
        kwargs={"done": f"Job {job_id} cancelled.", "what": f"cancel job {job_id}"},
    )
    if job.get("held"):
        hold.button(
            "Release",
            key="queue.release",
            icon=":material/play_arrow:",
            on_click=session.act,
            args=(lambda c: c.release(job_id),),
            kwargs={
                "done": f"Job {job_id} released: it starts when its turn comes.",
                "what": f"release job {job_id}",
            },
        )
    else:
        hold.button(
            "Hold",
            key="queue.hold",
            icon=":material/pause:",
            on_click=session.act,
            args=(lambda c: c.hold(job_id),),
            kwargs={
                "done": f"Job {job_id} held: it keeps its place in line but does not start until released.",
                "what": f"hold job {job_id}",
            },
        )
    choices = PRIORITIES  # who may use urgent is the API's rule (GPUYARD_URGENT_ADMINS_ONLY): it says so
    level_key = f"queue.priority.{job_id}"
    priority.selectbox("Priority", choices, index=_index(choices, job), key=level_key)
    set_priority.button(
        "Set priority", key="queue.set_priority", on_click=_set_priority, args=(job_id, level_key)
    )


def _set_priority(job_id: int, level_key: str) -> None:
    level = str(st.session_state.get(level_key) or "normal")
    session.act(
        lambda c: c.set_priority(job_id, level),
        done=f"Job {job_id} now has priority {level}.",
        what=f"change the priority of job {job_id}",
    )


def _index(choices: tuple[str, ...], job: Mapping[str, Any]) -> int:
    return choices.index(job["priority"]) if job["priority"] in choices else 0


if __name__ == "__main__":
    render()
