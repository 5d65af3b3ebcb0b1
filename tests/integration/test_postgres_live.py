"""The whole path with PostgreSQL as the database: controller, worker, RabbitMQ and real job processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.stack import running_stack, wait_for

pytestmark = pytest.mark.integration


def test_jobs_run_queue_and_cancel_on_postgresql(tmp_path: Path, amqp_url: str, pg_url: str) -> None:
    hold = f'echo "CVD=$CUDA_VISIBLE_DEVICES"; while [ ! -e {tmp_path}/$GPUYARD_JOB_ID ]; do sleep 0.05; done'
    with running_stack(tmp_path / "stack", amqp_url, extra_env={"GPUYARD_DATABASE_URL": pg_url}) as stack:
        with stack.admin() as c:
            ids = [c.submit(hold, gpus=1, name=f"pg{i}")["id"] for i in range(6)]
            for job_id in ids[:4]:
                stack.wait_state(job_id, "running")
            assert [q["id"] for q in c.queue()["data"]] == ids[4:]
            assert c.cancel(ids[5])["state"] == "cancelled"
            for job_id in ids:
                (tmp_path / str(job_id)).touch()
            for job_id in ids[:5]:
                job = stack.wait_state(job_id, "succeeded")
                assert f"CVD={job['attempts'][0]['gpu_indices'][0]}" in c.logs(job_id)["data"]
            wait_for(lambda: c.jobs(states=["succeeded"])["data"], what="the history")
            assert {j["id"] for j in c.jobs(states=["succeeded", "cancelled"], limit=10)["data"]} == set(ids)
