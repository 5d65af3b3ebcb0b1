"""`gpuyard tensorboard`: one TensorBoard over every job's runs (DATA_DIR/tensorboard/job-<id>-<name>/...)."""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Annotated

import typer

from gpuyard.entrypoints.cli.services import DataDirOpt, _apply, _settings, err

DEFAULT_PORT = 6006


def tensorboard(
    data_dir: DataDirOpt = None,
    port: Annotated[
        int | None, typer.Option("--port", help=f"Port [GPUYARD_TENSORBOARD_PORT, {DEFAULT_PORT}].")
    ] = None,
) -> None:
    """Serve TensorBoard over all jobs' runs (each job writes to its $GPUYARD_TB_DIR)."""
    _apply(data_dir=data_dir, tensorboard_port=port)
    settings = _settings()
    logdir = settings.tensorboard_logdir
    logdir.mkdir(parents=True, exist_ok=True)
    if importlib.util.find_spec("tensorboard") is None:
        err.print(
            "error: TensorBoard is not installed here: pip install tensorboard (or scripts/bootstrap.sh)."
        )
        raise typer.Exit(2) from None
    argv = tensorboard_argv(
        logdir=str(logdir), host=settings.host, port=settings.tensorboard_port or DEFAULT_PORT
    )
    err.print(f"TensorBoard over {logdir} on http://{settings.host}:{argv[argv.index('--port') + 1]}/")
    sys.stderr.flush()
    os.execv(sys.executable, argv)  # TensorBoard takes this process over: signals reach it directly


def tensorboard_argv(*, logdir: str, host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tensorboard.main",
        "--logdir",
        logdir,
        "--host",
        host,
        "--port",
        str(port),
        "--reload_interval",
        "5",
    ]


def register(app: typer.Typer) -> None:
    app.command()(tensorboard)
