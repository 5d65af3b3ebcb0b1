"""Dead letters: jobs that used up their attempts (yours; admins: everyone's) and, for admins, messages
that could not be processed; why, how many attempts, the job's last output; requeue one."""

from __future__ import annotations

from typing import Any

import streamlit as st

from gpuyard.client import Client
from gpuyard.entrypoints.ui import dead_letters, session
from gpuyard.entrypoints.ui.widgets import live

SHOWN = 20  # the newest, with their output; the table lists all the API answers (up to 100)
INCLUDE_REQUEUED = "dead.include_requeued"
COLUMNS = {
    "id": st.column_config.NumberColumn("id", width="small", format="%d"),
    "job": st.column_config.NumberColumn("job", width="small", format="%d"),
    "attempts": st.column_config.NumberColumn("attempts", width="small"),
}


def render() -> None:
    st.header("Dead letters")
    if session.is_admin():
        st.caption(
            "Jobs that used up their attempts, and messages gpuyard could not process. The page refreshes "
            "by itself."
        )
    else:
        st.caption("Your jobs that used up their attempts. The page refreshes by itself.")
    st.checkbox("Also those already requeued", key=INCLUDE_REQUEUED)
    live(_letters)


def _letters() -> None:
    session.show_notice()
    include = bool(st.session_state.get(INCLUDE_REQUEUED))
    letters = session.call(lambda c: c.dead_letters(include_requeued=include), what="load the dead letters")
    if letters is None:
        return
    me, admin = session.my_name(), session.is_admin()
    st.write(dead_letters.dead_summary(letters, is_admin=admin))
    if not letters:
        return
    st.dataframe(dead_letters.dead_rows(letters, me=me), hide_index=True, column_config=COLUMNS)
    if len(letters) > SHOWN:
        st.caption(f"The {SHOWN} newest are below, with their output.")
    for letter in letters[:SHOWN]:
        _letter(letter, me=me, admin=admin)


def _letter(letter: dict[str, Any], *, me: str, admin: bool) -> None:
    with st.expander(dead_letters.dead_title(letter, me=me)):
        st.markdown(f"**Why:** {letter['reason']}")
        if letter["kind"] == "job":
            st.caption("The end of its last attempt's output:")
            tail = letter.get("log_tail") or "(it wrote no output)"
            st.code(tail, language=None, height=320 if tail.count("\n") > 16 else "content")
        else:
            st.caption(f"Where it was going: {letter.get('routing_key') or '?'}")
            st.json(letter.get("body") or {}, expanded=False)
        if dead_letters.may_requeue(letter, is_admin=admin):
            st.button(
                "Requeue",
                key=f"dead.requeue.{letter['id']}",
                icon=":material/replay:",
                help="A job goes back in line with a fresh budget of attempts; a message is sent again.",
                on_click=_requeue,
                args=(letter["id"],),
            )


def _requeue(dead_id: int) -> None:
    answer: dict[str, Any] = {}

    def send(c: Client) -> None:
        answer.update(c.requeue_dead(dead_id))

    if session.run_action(send, what=f"requeue dead letter {dead_id}"):
        st.session_state[session.NOTICE] = ("success", dead_letters.requeued_text(answer))


if __name__ == "__main__":
    render()
