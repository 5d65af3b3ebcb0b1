"""CLI text helpers: durations read from and written for people, and `gpuyard why` in plain words."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from gpuyard.entrypoints.cli.format import about, duration, ordinal, parse_duration, why


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


@pytest.mark.parametrize(
    ("n", "text"),
    [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"), (12, "12th"), (13, "13th"), (21, "21st")]
    + [(22, "22nd"), (101, "101st"), (111, "111th"), (112, "112th")],
)
def test_ordinal(n: int, text: str) -> None:
    assert ordinal(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (40, "40s"), (90, "2m"), (1500, "25m"), (3569, "59m"), (3590, "1h00m"), (7500, "2h05m")]
    + [(97200, "1d03h")],
)
def test_about(seconds: float | None, text: str) -> None:
    assert about(seconds) == text


@pytest.fixture
def utc_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is UTC, so that the times `why` prints are known."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def today_at(hour: int, minute: int) -> str:
    return datetime.now(UTC).replace(hour=hour, minute=minute, second=0, microsecond=0).isoformat()


def wait_body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": 12,
        "held": False,
        "position": 3,
        "estimated_start_at": today_at(14, 5),
        "estimated_start_earliest_at": today_at(13, 50),
        "estimated_start_latest_at": today_at(14, 20),
        "estimated_wait_s": 1500.0,
        "reason": "gpus_busy",
        "reason_text": "waiting for 2 GPUs: 4 of 4 busy; the next one frees at about 14:05 UTC (job 8)",
        "source": "time_limit",
        "backfill": False,
    }
    body.update(fields)
    return body


@pytest.mark.usefixtures("utc_clock")
@pytest.mark.parametrize(
    ("fields", "text"),
    [
        (
            {},
            "Job 12 is 3rd in line. Estimated start 14:05 (between 13:50 and 14:20; from time limits), "
            "in 25m.\nWhy: waiting for 2 GPUs: 4 of 4 busy; the next one frees at about 14:05 UTC (job 8)",
        ),
        (
            {
                "position": 1,
                "estimated_start_earliest_at": today_at(14, 5),
                "estimated_start_latest_at": today_at(14, 5),
                "source": "default",
            },
            "Job 12 is next in line. Estimated start 14:05 (from the default runtime), in 25m.\nWhy: waiting",
        ),
        (
            {
                "estimated_start_at": None,
                "reason": "no_node_fits",
                "reason_text": "no online node has 8 GPUs",
            },
            "Job 12 is 3rd in line. No start can be foreseen yet.\nWhy: no online node has 8 GPUs",
        ),
        (
            {"held": True, "estimated_start_at": None, "reason": "held", "reason_text": "held: ..."},
            "Job 12 is held (3rd in line): `gpuyard release 12` lets it start.",
        ),
        (
            {"backfill": True, "source": "history"},
            "from similar past jobs), in 25m. It goes ahead of earlier jobs: its time limit shows it delays "
            "none of them.\nWhy:",
        ),
        ({"position": 0, "reason": "starting"}, "Job 12 is starting now."),
    ],
    ids=["busy", "next-no-band", "unforeseeable", "held", "backfill", "starting"],
)
def test_why_says_where_a_job_stands_in_plain_words(fields: dict[str, Any], text: str) -> None:
    said = why(wait_body(**fields))
    assert text in said, said
