"""`gpuyard.report`: one strict JSON line per call to $GPUYARD_METRICS_FILE, and never an exception."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gpuyard.report import METRICS_ENV, report


def _no_constants(name: str) -> Any:
    raise AssertionError(f"not strict JSON: {name}")


def lines(path: Path) -> list[dict[str, Any]]:
    """Every line parsed as strict JSON (NaN / Infinity refused)."""
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line, parse_constant=_no_constants) for line in text.splitlines()]


@pytest.fixture
def metrics_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "metrics.jsonl"
    monkeypatch.setenv(METRICS_ENV, str(path))
    return path


class Scalar:
    """Like a numpy or torch scalar: not a float, but converts to one."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __float__(self) -> float:
        return self.value


class MultiElementTensor:
    """Like a torch tensor with several elements: float() raises RuntimeError."""

    def __float__(self) -> float:
        raise RuntimeError("a Tensor with 2 elements cannot be converted to Scalar")


def test_each_call_appends_one_json_line(metrics_file: Path) -> None:
    report(step=1, total=10, loss=0.5)
    report(step=2, total=10, loss=0.25, acc=0.9)
    first, second = lines(metrics_file)
    assert (first["step"], first["total"], first["metrics"]) == (1, 10, {"loss": 0.5})
    assert (second["step"], second["total"], second["metrics"]) == (2, 10, {"loss": 0.25, "acc": 0.9})
    assert isinstance(first["t"], float) and first["t"] <= second["t"]


def test_step_and_total_are_optional(metrics_file: Path) -> None:
    report(lr=0.001)
    (record,) = lines(metrics_file)
    assert (record["step"], record["total"], record["metrics"]) == (None, None, {"lr": 0.001})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(float("nan"), None, id="nan"),
        pytest.param(float("inf"), None, id="inf"),
        pytest.param(float("-inf"), None, id="-inf"),
        pytest.param(1.5, 1.5, id="float"),
        pytest.param(3, 3, id="int"),
        pytest.param(10**30, 10**30, id="big-int"),
        pytest.param(True, True, id="bool"),
        pytest.param("resnet", "resnet", id="str"),
        pytest.param(None, None, id="none"),
        pytest.param(Scalar(0.75), 0.75, id="scalar-like"),
        pytest.param(Decimal("1.25"), 1.25, id="decimal"),
        pytest.param([1, 2], "[1, 2]", id="list-as-text"),
        pytest.param({"a": 1}, "{'a': 1}", id="dict-as-text"),
        pytest.param(object, str(object), id="object-as-text"),
    ],
)
def test_values_are_made_json_safe(metrics_file: Path, value: Any, expected: Any) -> None:
    report(step=value, total=value, m=value)
    (record,) = lines(metrics_file)
    assert record["step"] == expected
    assert record["total"] == expected
    assert record["metrics"] == {"m": expected}


@pytest.mark.parametrize(
    "value",
    [Scalar(float("nan")), Scalar(float("inf")), Decimal("NaN"), Decimal("-Infinity")],
    ids=["scalar-nan", "scalar-inf", "decimal-nan", "decimal-neg-inf"],
)
def test_scalar_nan_and_inf_become_null(metrics_file: Path, value: Any) -> None:
    report(loss=value)
    (record,) = lines(metrics_file)
    assert record["metrics"] == {"loss": None}


def test_a_value_whose_conversion_fails_oddly_does_not_raise(metrics_file: Path) -> None:
    report(step=1, weights=MultiElementTensor())
    (record,) = lines(metrics_file)
    assert record["step"] == 1


def test_without_the_variable_it_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(METRICS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    report(step=1, total=2, loss=0.1)
    assert list(tmp_path.iterdir()) == []


def test_an_empty_variable_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(METRICS_ENV, "")
    monkeypatch.chdir(tmp_path)
    report(step=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["a-directory", "missing-parent/metrics.jsonl"])
def test_an_unwritable_path_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    (tmp_path / "a-directory").mkdir()
    monkeypatch.setenv(METRICS_ENV, str(tmp_path / where))
    report(step=1, total=2, loss=0.1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-directory"]
    assert list((tmp_path / "a-directory").iterdir()) == []
