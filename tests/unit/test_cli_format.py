"""CLI text helpers: durations read from and written for people."""

from __future__ import annotations

import pytest

from gpuyard.entrypoints.cli.format import duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("0", 0),
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("1d", 86400),
        ("1h30m", 5400),
        ("1d2h3m4s", 93784),
        ("2H", 7200),
        (" 30m ", 1800),
        ("100m", 6000),
        ("0h5m", 300),
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("abc", id="letters"),
        pytest.param("5x", id="unknown-unit"),
        pytest.param("h", id="unit-without-number"),
        pytest.param("1.5h", id="fraction"),
        pytest.param("-5", id="negative"),
        pytest.param("1h 30m", id="inner-space"),
        pytest.param("30m5", id="trailing-number"),
        pytest.param("m30", id="unit-first"),
    ],
)
def test_parse_duration_refuses_with_a_hint(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(text)
    message = str(caught.value)
    assert repr(text.strip().lower()) in message
    assert "e.g." in message and "30m" in message


@pytest.mark.parametrize("text", ["", "   "], ids=["empty", "blank"])
def test_parse_duration_refuses_an_empty_duration(text: str) -> None:
    with pytest.raises(ValueError, match="e.g."):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0, "0s"),
        (0.4, "0s"),
        (59, "59s"),
        (59.6, "1m00s"),
        (60, "1m00s"),
        (90, "1m30s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (5400, "1h30m"),
        (86399, "23h59m"),
        (86400, "1d00h"),
        (90000, "1d01h"),
        (10 * 86400 + 5 * 3600, "10d05h"),
    ],
)
def test_duration(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text


@pytest.mark.parametrize("seconds", [90, 1800, 5400, 86400, 93600])
def test_parse_duration_reads_what_duration_writes_when_nothing_is_rounded(seconds: int) -> None:
    assert parse_duration(duration(seconds)) == seconds
