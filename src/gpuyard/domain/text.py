"""Text that arrives as JSON: what of it gpuyard can keep and pass on, and how to quote it back briefly."""

from __future__ import annotations

MAX_QUOTE_CHARS = 60


def text_problem(text: str) -> str | None:
    """Why `text` cannot be kept or passed on as given, in words (None: it can). JSON carries two things
    that nothing downstream takes: a NUL character (C strings end at it, PostgreSQL's text refuses it) and a
    lone surrogate such as "\\ud800" (not a character at all, so UTF-8 cannot encode it)."""
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "contains a lone surrogate (\\ud800-\\udfff), which is not a character"
    return None


def quote(value: object) -> str:
    """repr(value) for an error message, cut short: a refusal names what was sent, not all of it."""
    if isinstance(value, int) and abs(value) >= 10**30:  # repr() of a long enough int even fails
        return f"a number of about {int(value.bit_length() * 0.30103) + 1} digits"
    shown = repr(value)
    return shown if len(shown) <= MAX_QUOTE_CHARS else shown[: MAX_QUOTE_CHARS - 1] + "…"
