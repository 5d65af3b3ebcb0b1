"""Job submissions: what `make_spec` accepts, what it refuses, and that every refusal says what to change."""

from __future__ import annotations

from typing import Any

import pytest

from gpuyard.domain.errors import GpuyardError, InvalidJobSpec
from gpuyard.domain.jobs import (
    MAX_ARGS,
    MAX_COMMAND_BYTES,
    MAX_ENV_VALUE_BYTES,
    MAX_ENV_VARS,
    MAX_GPUS_PER_JOB,
    MAX_NAME_LEN,
    MAX_TIME_LIMIT_S,
    MAX_WORKDIR_LEN,
    JobSpec,
    Priority,
    make_spec,
    parse_command,
)


def submit(**overrides: Any) -> JobSpec:
    """A valid submission, with the given fields changed."""
    fields: dict[str, Any] = {"command": ["python", "train.py"], "gpus": 1}
    fields.update(overrides)
    return make_spec(**fields)


# --- valid submissions -------------------------------------------------------------------------------

VALID = [
    pytest.param({}, id="minimal"),
    pytest.param({"gpus": 1}, id="one-gpu"),
    pytest.param({"gpus": MAX_GPUS_PER_JOB}, id="max-gpus"),
    pytest.param({"command": "python train.py | tee log"}, id="shell-string"),
    pytest.param({"command": "x" * MAX_COMMAND_BYTES}, id="shell-string-at-byte-limit"),
    pytest.param({"command": ["a"] * MAX_ARGS}, id="argv-at-arg-limit"),
    pytest.param({"command": ("python", "train.py")}, id="argv-tuple"),
    pytest.param({"command": ["python", ""]}, id="empty-later-arg"),
    pytest.param({"priority": "low"}, id="prio-low"),
    pytest.param({"priority": "urgent"}, id="prio-urgent"),
    pytest.param({"priority": " HIGH "}, id="prio-padded-upper"),
    pytest.param({"name": "resnet-50 sweep"}, id="name"),
    pytest.param({"name": "n" * MAX_NAME_LEN}, id="name-at-limit"),
    pytest.param({"workdir": "/data/runs"}, id="abs-workdir"),
    pytest.param({"env": {"LR": "0.1", "_X1": "", "lower_ok": "v"}}, id="env"),
    pytest.param({"env": {"V": "x" * MAX_ENV_VALUE_BYTES}}, id="env-value-at-limit"),
    pytest.param({"env": {f"V{i}": "1" for i in range(MAX_ENV_VARS)}}, id="env-count-at-limit"),
    pytest.param({"env": {"CUDA_HOME": "/usr/local/cuda"}}, id="env-cuda-home-not-reserved"),
    pytest.param({"time_limit_s": 1}, id="limit-1s"),
    pytest.param({"time_limit_s": MAX_TIME_LIMIT_S}, id="limit-max"),
    pytest.param({"time_limit_s": None}, id="no-limit"),
    pytest.param({"preemptible": True}, id="preemptible"),
]


@pytest.mark.parametrize("overrides", VALID)
def test_valid_submissions_are_accepted(overrides: dict[str, Any]) -> None:
    spec = submit(**overrides)
    assert spec.gpus == overrides.get("gpus", 1)
    assert spec.argv and all(isinstance(a, str) for a in spec.argv)
    assert spec.name


def test_a_valid_spec_keeps_what_was_asked() -> None:
    spec = submit(
        command=["python", "train.py", "--lr", "0.1"],
        gpus=2,
        priority="high",
        name="  sweep  ",
        workdir="/data",
        env={"LR": "0.1"},
        time_limit_s=3600,
    )
    assert spec == JobSpec(
        argv=("python", "train.py", "--lr", "0.1"),
        gpus=2,
        priority=Priority.HIGH,
        name="sweep",
        workdir="/data",
        env={"LR": "0.1"},
        time_limit_s=3600,
    )
    assert spec.display_command == "python train.py --lr 0.1"
    assert spec.preemptible is False
    assert submit(command=["true"], gpus=1, preemptible=True).preemptible is True


# --- invalid submissions: (overrides, a word the message must contain) -------------------------------

INVALID = [
    pytest.param({"gpus": 0}, "gpus", id="gpus-zero"),
    pytest.param({"gpus": -1}, "gpus", id="gpus-negative"),
    pytest.param({"gpus": True}, "gpus", id="gpus-bool"),
    pytest.param({"gpus": 1.0}, "gpus", id="gpus-float"),
    pytest.param({"gpus": "2"}, "gpus", id="gpus-str"),
    pytest.param({"gpus": None}, "gpus", id="gpus-none"),
    pytest.param({"gpus": MAX_GPUS_PER_JOB + 1}, "gpus", id="gpus-over-max"),
    pytest.param({"priority": "critical"}, "priority", id="prio-unknown"),
    pytest.param({"priority": ""}, "priority", id="prio-empty"),
    pytest.param({"command": ""}, "command", id="cmd-empty-str"),
    pytest.param({"command": "   \t\n"}, "command", id="cmd-whitespace-str"),
    pytest.param({"command": []}, "command", id="cmd-empty-list"),
    pytest.param({"command": [""]}, "command", id="cmd-list-empty-program"),
    pytest.param({"command": ["  ", "x"]}, "command", id="cmd-list-whitespace-program"),
    pytest.param({"command": ["python", "a\x00b"]}, "command", id="cmd-list-nul"),
    pytest.param({"command": "x" * (MAX_COMMAND_BYTES + 1)}, "command", id="cmd-str-oversize"),
    pytest.param({"command": "é" * (MAX_COMMAND_BYTES // 2 + 1)}, "command", id="cmd-str-oversize-bytes"),
    pytest.param({"command": ["x" * MAX_COMMAND_BYTES]}, "command", id="cmd-list-oversize"),
    pytest.param({"command": ["a"] * (MAX_ARGS + 1)}, "command", id="cmd-too-many-args"),
    pytest.param({"workdir": "data/runs"}, "working directory", id="workdir-relative"),
    pytest.param({"workdir": "./runs"}, "working directory", id="workdir-dot-relative"),
    pytest.param({"workdir": ""}, "working directory", id="workdir-empty"),
    pytest.param({"workdir": "   "}, "working directory", id="workdir-whitespace"),
    pytest.param({"workdir": "/data\x00/x"}, "working directory", id="workdir-nul"),
    pytest.param({"workdir": "/" + "d" * MAX_WORKDIR_LEN}, "working directory", id="workdir-too-long"),
    pytest.param({"name": "n" * (MAX_NAME_LEN + 1)}, "name", id="name-too-long"),
    pytest.param({"env": {"1ABC": "v"}}, "environment variable", id="env-leading-digit"),
    pytest.param({"env": {"A-B": "v"}}, "environment variable", id="env-dash"),
    pytest.param({"env": {"A B": "v"}}, "environment variable", id="env-space"),
    pytest.param({"env": {"A=B": "v"}}, "environment variable", id="env-equals"),
    pytest.param({"env": {"": "v"}}, "environment variable", id="env-empty-name"),
    pytest.param({"env": {"CUDA_VISIBLE_DEVICES": "0"}}, "CUDA_VISIBLE_DEVICES", id="env-reserved-cvd"),
    pytest.param(
        {"env": {"CUDA_DEVICE_ORDER": "FASTEST_FIRST"}}, "CUDA_DEVICE_ORDER", id="env-reserved-order"
    ),
    pytest.param({"env": {"GPUYARD_JOB_ID": "7"}}, "GPUYARD_JOB_ID", id="env-reserved-job-id"),
    pytest.param({"env": {"GPUYARD_ANYTHING": "x"}}, "GPUYARD_ANYTHING", id="env-reserved-prefix"),
    pytest.param(
        {"env": {"V": "x" * (MAX_ENV_VALUE_BYTES + 1)}}, "environment variable", id="env-value-oversize"
    ),
    pytest.param({"env": {"V": "a\x00b"}}, "environment variable", id="env-value-nul"),
    pytest.param({"env": {"V": 1}}, "environment variable", id="env-value-not-str"),
    pytest.param(
        {"env": {f"V{i}": "1" for i in range(MAX_ENV_VARS + 1)}}, "environment variable", id="env-too-many"
    ),
    pytest.param({"time_limit_s": 0}, "time_limit_s", id="limit-zero"),
    pytest.param({"time_limit_s": -60}, "time_limit_s", id="limit-negative"),
    pytest.param({"time_limit_s": True}, "time_limit_s", id="limit-bool"),
    pytest.param({"time_limit_s": 1.5}, "time_limit_s", id="limit-float"),
    pytest.param({"time_limit_s": MAX_TIME_LIMIT_S + 1}, "time_limit_s", id="limit-too-large"),
    pytest.param({"preemptible": "yes"}, "preemptible", id="preemptible-not-bool"),
    # JSON carries a NUL character and lone surrogates ("\ud800"), which no database, file or process takes
    pytest.param({"command": "echo \ud800"}, "command", id="cmd-str-surrogate"),
    pytest.param({"command": ["echo", "\udfff"]}, "command", id="cmd-list-surrogate"),
    pytest.param({"name": "a\x00b"}, "name", id="name-nul"),
    pytest.param({"name": "run \ud800"}, "name", id="name-surrogate"),
    pytest.param({"workdir": "/data/\ud800"}, "working directory", id="workdir-surrogate"),
    pytest.param({"env": {"V": "\ud800"}}, "environment variable", id="env-value-surrogate"),
    pytest.param({"env": {"\ud800": "v"}}, "environment variable", id="env-name-surrogate"),
]


@pytest.mark.parametrize(("overrides", "field_word"), INVALID)
def test_invalid_submissions_are_refused_with_a_useful_message(
    overrides: dict[str, Any], field_word: str
) -> None:
    with pytest.raises(InvalidJobSpec) as caught:
        submit(**overrides)
    error = caught.value
    assert isinstance(error, GpuyardError)
    assert error.code == "invalid_job_spec"
    assert error.detail == str(error)
    assert error.detail.strip()
    assert field_word.lower() in error.detail.lower()
    # Says what to do: a limit, a remedy or an example, not just "invalid".
    assert any(
        hint in error.detail.lower()
        for hint in (":", "must", "use", "at most", "at least", "remove", "shorten", "cannot be given")
    ), error.detail


def test_a_shell_string_with_a_nul_byte_is_refused() -> None:
    with pytest.raises(InvalidJobSpec, match="NUL"):
        submit(command="python train.py\x00 --x")


# --- commands ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["python train.py", "python train.py | tee log && echo done", "  ./run.sh  ", "x" * MAX_COMMAND_BYTES],
)
def test_a_shell_string_runs_under_sh_c_unchanged(text: str) -> None:
    assert parse_command(text) == ("/bin/sh", "-c", text)
    assert submit(command=text).argv == ("/bin/sh", "-c", text)


@pytest.mark.parametrize(
    "argv", [["python", "train.py"], ("python",), ["a b", "c;d", "$HOME"], ["a"] * MAX_ARGS]
)
def test_an_argv_list_runs_as_given(argv: list[str]) -> None:
    assert parse_command(argv) == tuple(argv)


# --- names -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "name", "expected"),
    [
        (["python", "train.py"], None, "python"),
        (["/usr/bin/python3", "train.py"], None, "python3"),
        (["./scripts/train.sh"], None, "train.sh"),
        ("./scripts/train.sh", None, "train.sh"),
        ("python train.py", None, "python train.py"),
        (["python", "train.py"], "my run", "my run"),
        (["python", "train.py"], "  padded  ", "padded"),
        (["python", "train.py"], "   ", "python"),
        (["python", "train.py"], "", "python"),
        ("x" * 300, None, "x" * MAX_NAME_LEN),
    ],
)
def test_default_name_is_derived_from_the_program(
    command: str | list[str], name: str | None, expected: str
) -> None:
    assert submit(command=command, name=name).name == expected


def test_a_shell_string_ending_in_a_slash_still_gets_a_name() -> None:
    assert submit(command="ls /tmp/").name != ""


def test_an_empty_name_for_a_long_command_is_treated_like_no_name() -> None:
    assert submit(command="x" * 300, name="").name == submit(command="x" * 300, name=None).name


# --- priorities --------------------------------------------------------------------------------------


def test_priority_ranks_order_low_normal_high_urgent() -> None:
    ranks = [p.rank for p in (Priority.LOW, Priority.NORMAL, Priority.HIGH, Priority.URGENT)]
    assert ranks == sorted(ranks)
    assert len(set(ranks)) == 4
    assert {p.rank for p in Priority} == set(ranks)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("low", Priority.LOW),
        ("normal", Priority.NORMAL),
        (" HIGH ", Priority.HIGH),
        ("Urgent", Priority.URGENT),
        ("\tnormal\n", Priority.NORMAL),
    ],
)
def test_priority_parse_is_case_and_space_insensitive(text: str, expected: Priority) -> None:
    assert Priority.parse(text) is expected


@pytest.mark.parametrize("text", ["", "hi", "critical", "0", "high!"])
def test_priority_parse_refuses_unknown_names_and_lists_the_valid_ones(text: str) -> None:
    with pytest.raises(InvalidJobSpec) as caught:
        Priority.parse(text)
    for p in Priority:
        assert p.value in caught.value.detail


def test_default_priority_is_normal() -> None:
    assert submit().priority is Priority.NORMAL


@pytest.mark.parametrize(
    ("overrides", "sent"),
    [
        ({"priority": "p" * 1_000_000}, "p" * 100),
        ({"env": {"V" * 100_000 + "-": "x"}}, "V" * 100),
        ({"workdir": "relative/" + "d" * 4000}, "d" * 100),
        ({"gpus": -(10**40)}, "0" * 30),
        ({"time_limit_s": -(10**4000)}, "0" * 30),
    ],
)
def test_a_refusal_quotes_what_was_sent_briefly(overrides: dict[str, Any], sent: str) -> None:
    with pytest.raises(InvalidJobSpec) as caught:
        submit(**overrides)
    assert len(caught.value.detail) < 200 and sent not in caught.value.detail
