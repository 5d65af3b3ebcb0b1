"""`gpuyard up | controller | worker`: start the services."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from sqlalchemy.engine import make_url

from gpuyard.domain.errors import GpuyardError
from gpuyard.settings import Settings

err = Console(stderr=True, highlight=False)
log = logging.getLogger("gpuyard.up")


def configure_logging(level: str, role: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)


DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Database, job output, tokens [GPUYARD_DATA_DIR].")
]
PortOpt = Annotated[int | None, typer.Option("--port", help="API port [GPUYARD_PORT, 8765].")]
BackendOpt = Annotated[str | None, typer.Option("--gpu-backend", help="auto | nvml | nvidia-smi | fake.")]
FakeOpt = Annotated[int | None, typer.Option("--fake-gpus", help="GPUs of the fake backend [4].")]


def _apply(**options: object) -> None:
    """Command-line options become GPUYARD_* variables, so the child processes see them too."""
    for name, value in options.items():
        if value is not None:
            os.environ[f"GPUYARD_{name.upper()}"] = str(value)


def _settings() -> Settings:
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as e:
        err.print(f"error: invalid setting: {e}")
        raise typer.Exit(2) from None


def controller(data_dir: DataDirOpt = None, port: PortOpt = None) -> None:
    """Run the API and the scheduler (the only process that writes the database)."""
    import uvicorn

    from gpuyard.entrypoints.api.app import create_app
    from gpuyard.entrypoints.api.controller import hold_data_dir

    _apply(data_dir=data_dir, port=port)
    settings = _settings()
    configure_logging(settings.log_level, "controller")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock = hold_data_dir(settings.data_dir)  # held until this process exits
    except GpuyardError as e:
        err.print(f"error: {e.detail}")
        raise typer.Exit(2) from None
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False, lifespan="on"
    )
    uvicorn.Server(config).run()
    lock.close()


def worker(
    data_dir: DataDirOpt = None,
    gpu_backend: BackendOpt = None,
    fake_gpus: FakeOpt = None,
    node_name: Annotated[str | None, typer.Option("--node-name", help="This node's name [hostname].")] = None,
) -> None:
    """Run the worker of this machine: reports its GPUs and runs the jobs dispatched to it."""
    from gpuyard.adapters.gpu.detect import describe_backend, open_gpu_backend
    from gpuyard.entrypoints.worker.agent import Worker

    _apply(data_dir=data_dir, gpu_backend=gpu_backend, fake_gpus=fake_gpus, node_name=node_name)
    settings = _settings()
    configure_logging(settings.log_level, "worker")
    state_file = str(settings.fake_gpu_state_file) if settings.fake_gpu_state_file else None
    try:
        gpus = open_gpu_backend(
            settings.gpu_backend,
            fake_count=settings.fake_gpus,
            node=settings.node_name,
            fake_state_file=state_file,
        )
    except GpuyardError as e:
        err.print(f"error: {e.detail}")
        raise typer.Exit(2) from None
    log.info("GPU backend: %s", describe_backend(gpus))

    async def main() -> None:
        agent = Worker(settings, gpus)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)
        loop.add_signal_handler(signal.SIGUSR1, agent.drain)
        pid_file = worker_pid_file(settings)
        pid_file.write_text(f"{os.getpid()}\n")
        try:
            await agent.run()
        finally:
            await agent.shutdown()
            pid_file.unlink(missing_ok=True)

    asyncio.run(main())


def worker_pid_file(settings: Settings) -> Path:
    return settings.data_dir / f"worker-{settings.node_name}.pid"


def drain(
    data_dir: DataDirOpt = None,
    node_name: Annotated[
        str | None, typer.Option("--node-name", help="The worker's node [hostname].")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until it has exited.")] = True,
) -> None:
    """Tell this machine's worker to take no new job and to exit once its running jobs end."""
    _apply(data_dir=data_dir, node_name=node_name)
    settings = _settings()
    pid_file = worker_pid_file(settings)
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGUSR1)
    except (OSError, ValueError):
        err.print(f"error: no worker of node {settings.node_name} runs with data dir {settings.data_dir}.")
        raise typer.Exit(1) from None
    err.print(f"Worker {settings.node_name} (pid {pid}) is draining: it takes no new job.")
    while wait and _running(pid):
        time.sleep(0.5)
    if wait:
        err.print("It has exited: its jobs are done.")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def up(
    data_dir: DataDirOpt = None,
    port: PortOpt = None,
    gpu_backend: BackendOpt = None,
    fake_gpus: FakeOpt = None,
    broker: Annotated[str | None, typer.Option("--broker", help="auto | external | local [auto].")] = None,
    tensorboard_port: Annotated[
        int | None,
        typer.Option(
            "--tensorboard-port", help="Also serve TensorBoard on this port [GPUYARD_TENSORBOARD_PORT]."
        ),
    ] = None,
    ui_port: Annotated[int | None, typer.Option("--ui-port", help="Web UI port [GPUYARD_UI_PORT].")] = None,
    with_ui: Annotated[
        bool | None, typer.Option("--ui/--no-ui", help="Start the web UI too [GPUYARD_UI, yes].")
    ] = None,
) -> None:
    """Start RabbitMQ (if none answers), the controller, this machine's worker and the web UI, in the
    foreground. Ctrl-C stops them all."""
    from gpuyard.adapters.broker.local import (
        INSTALL_HINT,
        LocalRabbitmq,
        amqp_reachable,
        find_rabbitmq_server,
    )
    from gpuyard.adapters.broker.local import free_port as pick_port
    from gpuyard.adapters.gpu.detect import describe_backend, open_gpu_backend
    from gpuyard.entrypoints.api.controller import hold_data_dir

    _apply(
        data_dir=data_dir,
        port=port,
        gpu_backend=gpu_backend,
        fake_gpus=fake_gpus,
        broker=broker,
        tensorboard_port=tensorboard_port,
    )
    _apply(ui_port=ui_port, ui=None if with_ui is None else str(with_ui).lower())
    settings = _settings()
    configure_logging(settings.log_level, "up")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        hold_data_dir(settings.data_dir).close()  # fail early and clearly if another instance runs here
    except GpuyardError as e:
        err.print(f"error: {e.detail}")
        raise typer.Exit(2) from None
    local: LocalRabbitmq | None = None
    broker_note = f"RabbitMQ at {settings.amqp_url.split('@')[-1]}"
    if settings.broker == "local" or (settings.broker == "auto" and not amqp_reachable(settings.amqp_url)):
        if find_rabbitmq_server() is None:
            err.print(
                f"error: no RabbitMQ answers at {settings.amqp_url} and none is installed. {INSTALL_HINT}"
            )
            raise typer.Exit(2)
        local_port = settings.local_broker_port
        if amqp_reachable(f"amqp://127.0.0.1:{local_port}/", timeout_s=0.5):
            local_port = pick_port()
        local = LocalRabbitmq(settings.data_dir / "rabbitmq", port=local_port)
        where = settings.data_dir / "rabbitmq"
        err.print(f"Starting a private RabbitMQ on 127.0.0.1:{local_port} (data in {where})")
        try:
            os.environ["GPUYARD_AMQP_URL"] = local.start()
        except GpuyardError as e:
            err.print(f"error: {e.detail}")
            raise typer.Exit(2) from None
        broker_note = f"private RabbitMQ on 127.0.0.1:{local_port}"
    elif settings.broker == "external" and not amqp_reachable(settings.amqp_url):
        err.print(f"error: no RabbitMQ answers at {settings.amqp_url}: start it or fix GPUYARD_AMQP_URL.")
        raise typer.Exit(2)
    os.environ["GPUYARD_INSTANCE"] = settings.instance_name()
    try:
        backend = open_gpu_backend(
            settings.gpu_backend, fake_count=settings.fake_gpus, node=settings.node_name
        )
    except GpuyardError as e:
        err.print(f"error: {e.detail}")
        raise typer.Exit(2) from None
    gpu_note = describe_backend(backend)
    is_fake = backend.name == "fake"
    backend.close()

    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    stopping = False

    def start(role: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "gpuyard", role], start_new_session=True)
        children.append((role, proc))
        return proc

    def stop_all(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)
    code = 0
    if settings.tensorboard_port and not settings.tensorboard_url:  # the controller links jobs to it
        host = settings.api_url.split("//")[1].rsplit(":", 1)[0]
        os.environ["GPUYARD_TENSORBOARD_URL"] = f"http://{host}:{settings.tensorboard_port}"
    try:
        ctl = start("controller")
        if not _wait_ready(settings.api_url, ctl, lambda: stopping):
            err.print("error: the controller did not become ready; see its log above.")
            code = 1
            return
        start("worker")
        if settings.tensorboard_port:
            start("tensorboard")
        (settings.data_dir / "api_url").write_text(settings.api_url + "\n")
        ui_note = _start_ui(settings, start) if settings.ui else None
        _announce(settings, gpu_note=gpu_note, broker_note=broker_note, is_fake=is_fake, ui_note=ui_note)
        while not stopping:
            for role, proc in list(children):
                if proc.poll() is None:
                    continue
                if role == "ui":  # the API and the jobs do not depend on it: keep them running
                    err.print(
                        f"error: the web UI exited with status {proc.returncode}; the API and the worker "
                        "keep running. Start the UI again with `gpuyard ui`."
                    )
                    children.remove((role, proc))
                    continue
                err.print(f"error: the {role} exited with status {proc.returncode}; stopping gpuyard.")
                stopping, code = True, 1
            time.sleep(0.2)
    finally:
        err.print("Stopping gpuyard…")
        for role, proc in reversed(children):  # worker first: it reports its jobs' ends
            _stop_child(role, proc, settings.kill_grace_s + 10)
        if local is not None:
            local.stop()
        if code:
            raise typer.Exit(code)


def _start_ui(settings: Settings, start: Callable[[str], subprocess.Popen[bytes]]) -> str:
    """Start the web UI as a child; say where it is (or why it is not there)."""
    from gpuyard.adapters.broker.local import free_port
    from gpuyard.entrypoints.ui.launch import port_free, ui_url, wait_healthy

    port = settings.ui_port
    if not port_free(settings.host, port):
        port = free_port()
        err.print(f"Port {settings.ui_port} is taken (another gpuyard?): the web UI uses port {port}.")
    os.environ["GPUYARD_UI_PORT"] = str(port)
    os.environ["GPUYARD_UI_API_URL"] = settings.api_url
    proc = start("ui")
    url = ui_url(settings.host, port)
    if wait_healthy(url, timeout_s=60, alive=lambda: proc.poll() is None):
        return f"{url}  (sign in with the admin token below, or your own)"
    return f"{url} did not start; see its log above (the API and the worker run without it)"


def _wait_ready(api_url: str, proc: subprocess.Popen[bytes], stopping: Callable[[], bool]) -> bool:
    from gpuyard.entrypoints.ui.launch import wait_answering

    return wait_answering(
        f"{api_url}/readyz", timeout_s=60, alive=lambda: proc.poll() is None and not stopping()
    )


def _stop_child(role: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            err.print(f"the {role} did not stop in {timeout_s:.0f} s: killing it")
            proc.kill()
            proc.wait()


def _announce(
    settings: Settings, *, gpu_note: str, broker_note: str, is_fake: bool, ui_note: str | None
) -> None:
    lines = [
        "gpuyard is up.",
        f"  web UI:      {ui_note}" if ui_note else "  web UI:      off (GPUYARD_UI=false or --no-ui)",
        f"  API:         {settings.api_url}  (OpenAPI docs: {settings.api_url}/docs)",
        f"  GPU backend: {gpu_note}",
        f"  broker:      {broker_note}",
        f"  database:    {make_url(settings.db_url).render_as_string(hide_password=True)}",
        f"  admin token: {settings.admin_token_file} (readable by you only; the CLI uses it)",
        f"  metrics:     {settings.api_url}/metrics (Prometheus)",
        f"  data dir:    {settings.data_dir}",
        f"  try:         export GPUYARD_DATA_DIR={settings.data_dir}",
        "               gpuyard submit --gpus 1 -- python examples/train_digits.py",
        "Ctrl-C stops gpuyard; jobs still running keep running and the next start picks them up.",
    ]
    if settings.tensorboard_port:
        tb_url = os.environ.get("GPUYARD_TENSORBOARD_URL", settings.tensorboard_url or "")
        lines.insert(5, f"  TensorBoard: {tb_url}  (runs in {settings.tensorboard_logdir})")
    if is_fake:
        banner = "!" * 78
        why = "no NVIDIA GPU was found" if settings.gpu_backend == "auto" else "it was chosen"
        lines[3:3] = [
            banner,
            f"!! FAKE GPU BACKEND ({why}): gpuyard simulates {settings.fake_gpus} GPUs;",
            "!! jobs get CUDA_VISIBLE_DEVICES but run on the CPU.",
            banner,
        ]
    print("\n".join(lines), flush=True)


def ui(
    api: Annotated[
        str | None,
        typer.Option("--api", help="The API's URL [GPUYARD_UI_API_URL, GPUYARD_URL, the data dir's]."),
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="Web UI port [GPUYARD_UI_PORT, 8766].")] = None,
) -> None:
    """Run the web UI alone, against a gpuyard API (`gpuyard up` starts it too)."""
    from gpuyard.client import discover
    from gpuyard.entrypoints.ui.launch import port_free, streamlit_argv, ui_url

    _apply(ui_api_url=api, ui_port=port)
    settings = _settings()
    api_url = settings.ui_api_url or discover()[0]
    os.environ["GPUYARD_UI_API_URL"] = api_url
    if not port_free(settings.host, settings.ui_port):
        err.print(f"error: port {settings.ui_port} is taken: pick another with --port (or GPUYARD_UI_PORT).")
        raise typer.Exit(2)
    err.print(f"gpuyard web UI: {ui_url(settings.host, settings.ui_port)} (API: {api_url})")
    sys.stderr.flush()
    sys.stdout.flush()
    argv = streamlit_argv(host=settings.host, port=settings.ui_port)
    os.execv(argv[0], argv)  # Streamlit takes over this process, signals included


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(ui)
    app.command()(controller)
    app.command("api", help="Same as `controller`.")(controller)
    worker_app = typer.Typer(
        help="This machine's worker: reports its GPUs and runs the jobs dispatched to it.",
        invoke_without_command=True,
    )
    worker_app.callback()(_worker_group)
    worker_app.command("drain")(drain)
    app.add_typer(worker_app, name="worker")


def _worker_group(
    ctx: typer.Context,
    data_dir: DataDirOpt = None,
    gpu_backend: BackendOpt = None,
    fake_gpus: FakeOpt = None,
    node_name: Annotated[str | None, typer.Option("--node-name", help="This node's name [hostname].")] = None,
) -> None:
    """Run the worker of this machine (`gpuyard worker drain`: let it finish its jobs and exit)."""
    if ctx.invoked_subcommand is None:
        worker(data_dir=data_dir, gpu_backend=gpu_backend, fake_gpus=fake_gpus, node_name=node_name)
