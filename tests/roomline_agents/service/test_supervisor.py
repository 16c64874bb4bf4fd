"""The job supervisor's process pool, with real job processes whose start the test controls.

Every job process is started through a gate: a shell script in place of the Python interpreter that
waits until the test releases it (by pid) before it execs the real interpreter, or exits 1 if the
test makes that start fail. So the order in which processes become ready is set by the test, and
the assertions are on which process each job got and on the pool's counts, never on timings.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from roomline_agents import control
from roomline_agents.service.supervisor import JobSpec, JobSupervisor
from roomline_harness.aio import wait_for

pytestmark = pytest.mark.timeout(180)

#: Job processes import the agent API before they are ready; under load that takes seconds.
START = 90.0
TARGET = "roomline_harness.fixture_agents:until_stopped"


@dataclass
class Pool:
    """A supervisor whose job processes start only when released."""

    sup: JobSupervisor
    gate: Path
    statuses: list[tuple[str, str, str]] = field(default_factory=list)

    def gated(self) -> list[int]:
        """Pids of processes held at the gate, in the order the supervisor started them."""
        return [jp.pid for jp in self.sup.starting_procs if (self.gate / f"{jp.pid}.wait").exists()]

    def release(self, pid: int) -> None:
        (self.gate / f"{pid}.go").touch()

    def fail(self, pid: int) -> None:
        (self.gate / f"{pid}.fail").touch()

    def idle_pids(self) -> list[int]:
        return [jp.pid for jp in self.sup.idle]

    def running(self, job_id: str) -> bool:
        return (job_id, "running", "") in self.statuses

    async def held(self, n: int) -> list[int]:
        """Wait until ``n`` starts are held at the gate; their pids."""
        await wait_for(lambda: len(self.gated()) == n, START, f"{n} processes at the gate")
        return self.gated()


def spec(job_id: str) -> JobSpec:
    return JobSpec(
        control.StartJob(
            job_id=job_id,
            dispatch_id="AD_" + job_id,
            agent_name="until-stopped",
            target=TARGET,
            room="pool-room",
            identity="agent-" + job_id,
            token="unused: the job never connects",
        )
    )


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[Pool]:
    gate = tmp_path / "gate"
    gate.mkdir()
    script = tmp_path / "python-gate"
    script.write_text(
        "#!/bin/sh\n"
        f'touch "{gate}/$$.wait"\n'
        f'while [ ! -e "{gate}/$$.go" ]; do\n'
        f'  if [ -e "{gate}/$$.fail" ]; then exit 1; fi\n'
        "  sleep 0.02\n"
        "done\n"
        f'exec "{sys.executable}" "$@"\n'
    )
    script.chmod(0o755)
    holder: list[Pool] = []

    def on_status(job_id: str, state: str, error: str) -> None:
        holder[0].statuses.append((job_id, state, error))

    async def on_remove(job_id: str, identity: str, destination: str) -> str:
        return "not used here"

    sup = JobSupervisor(
        1, str(tmp_path / "no-channel.sock"), on_status, on_remove, python=str(script)
    )
    p = Pool(sup, gate)
    holder.append(p)
    await sup.start()
    try:
        yield p
    finally:
        for pid in [*p.gated(), *(jp.pid for jp in sup.starting_procs)]:
            p.release(pid)
        await sup.stop()


async def test_waiting_job_takes_the_first_ready_process_and_the_pool_refills(pool: Pool) -> None:
    sup = pool.sup
    [a] = await pool.held(1)  # the pool's warm process, still starting
    launch = asyncio.ensure_future(sup.launch(spec("j1")))
    # The job queues, and a start is added for it on top of the pool's own.
    b = [pid for pid in await pool.held(2) if pid != a][0]
    assert sup.waiting == 1 and sup.starting == 2

    pool.release(a)  # the pool's process is ready first: the job gets it, not "its" own start
    assert await asyncio.wait_for(launch, START) is True
    assert sup.busy["j1"].pid == a
    await wait_for(lambda: pool.running("j1"), START, "j1 running")
    assert [jp.pid for jp in sup.starting_procs] == [b] and sup.idle == []

    pool.release(b)  # the start made for the job becomes the warm process
    await wait_for(lambda: pool.idle_pids() == [b], START, "b idle")
    assert sup.metrics()["spawned"] == 2 and sup.metrics()["waited"] == 1

    # A job that finds a warm process takes it without waiting; the refill starts at once.
    assert await sup.launch(spec("j2")) is True
    assert sup.busy["j2"].pid == b and sup.idle == [] and sup.starting == 1
    assert sup.metrics()["waited"] == 1
    [c] = await pool.held(1)
    pool.release(c)
    await wait_for(lambda: pool.idle_pids() == [c], START, "c idle")
    await wait_for(lambda: pool.running("j2"), START, "j2 running")


async def test_back_to_back_jobs_all_get_a_process_while_one_start_is_stuck(pool: Pool) -> None:
    sup = pool.sup
    [stuck] = await pool.held(1)
    launches = [asyncio.ensure_future(sup.launch(spec(f"b{i}"))) for i in range(3)]
    # One start in flight per waiting job plus the pool's own (the stuck one).
    others = [pid for pid in await pool.held(4) if pid != stuck]
    assert sup.waiting == 3 and sup.starting == 4
    for pid in others:
        pool.release(pid)
    assert await asyncio.wait_for(asyncio.gather(*launches), START) == [True] * 3
    assert sorted(sup.busy[f"b{i}"].pid for i in range(3)) == sorted(others)
    await wait_for(lambda: all(pool.running(f"b{i}") for i in range(3)), START, "all running")
    assert pool.gated() == [stuck] and sup.idle == [] and sup.waiting == 0

    pool.release(stuck)  # late, it still becomes the pool's warm process
    await wait_for(lambda: pool.idle_pids() == [stuck], START, "stuck one idle")
    assert sup.metrics()["spawned"] == 4 and sup.metrics()["waited"] == 3

    for i in range(3):
        assert sup.stop_job(f"b{i}", "test over")
    await wait_for(lambda: not sup.busy, START, "jobs gone")
    exited = sorted(job for job, state, _ in pool.statuses if state == "exited")
    assert exited == ["b0", "b1", "b2"]


async def test_failed_start_does_not_hold_up_a_waiting_job(pool: Pool) -> None:
    sup = pool.sup
    [a] = await pool.held(1)
    launch = asyncio.ensure_future(sup.launch(spec("f1")))
    b = [pid for pid in await pool.held(2) if pid != a][0]
    pool.fail(a)  # exits before Ready: counted as failed at once, not after READY_TIMEOUT
    await wait_for(lambda: sup.spawn_failures == 1 and a not in pool.gated(), START, "a failed")
    assert not launch.done()
    pool.release(b)
    assert await asyncio.wait_for(launch, START) is True
    assert sup.busy["f1"].pid == b
    # After the failure's backoff the pool starts its warm process again.
    [c] = await pool.held(1)
    pool.release(c)
    await wait_for(lambda: pool.idle_pids() == [c], START, "c idle")
    assert sup.spawn_failures == 0


async def test_job_stopped_while_waiting_never_starts(pool: Pool) -> None:
    sup = pool.sup
    [a] = await pool.held(1)
    launch = asyncio.ensure_future(sup.launch(spec("s1")))
    await pool.held(2)
    assert sup.stop_job("s1", "dispatch deleted")
    assert await asyncio.wait_for(launch, START) is False
    assert sup.waiting == 0
    for pid in pool.gated():
        pool.release(pid)
    # Both starts end up warm; neither ran the stopped job.
    await wait_for(lambda: len(sup.idle) == 2, START, "two idle")
    assert "s1" not in sup.busy and not [s for s in pool.statuses if s[0] == "s1"]
