"""roomline_agents/service/dispatch.py: the dispatch table (jobs, restarts, protobuf view)."""

from __future__ import annotations

import pytest
from livekit.protocol import agent_dispatch

from roomline.errors import NotFound
from roomline_agents.service.dispatch import MAX_RESTARTS, DispatchTable, JobState, dispatch_proto


def test_dispatch_table_jobs_restarts_and_proto() -> None:
    t = DispatchTable()
    d = t.create("r", "echo", 1.0, metadata="m")
    job = t.new_job(d, 2.0)
    assert d.current is job and job.identity == f"agent-{job.id}"
    t.set_state(job, JobState.FAILED, 3.0, "boom")
    delays = []
    for _ in range(MAX_RESTARTS + 2):
        delay = t.restart_delay(job)
        if delay is None:
            break
        delays.append(delay)
    assert delays == [1.0, 2.0, 4.0][:MAX_RESTARTS]
    p = dispatch_proto(d)
    assert p.id == d.id and p.state.jobs[0].state.status == JobState.FAILED
    assert p.state.jobs[0].state.error == "boom" and p.metadata == "m"
    assert t.find("r") == [d] and t.find("other") == []
    with pytest.raises(NotFound):
        t.remove(d.id, "other", 4.0)
    assert t.remove(d.id, "r", 4.0).deleted_at == 4.0
    with pytest.raises(NotFound):
        t.remove(d.id, "r", 5.0)


def test_dispatch_never_restart_policy() -> None:
    t = DispatchTable()
    d = t.create("r", "echo", 1.0, restart_policy=1)  # JRP_NEVER
    job = t.new_job(d, 1.0)
    t.set_state(job, JobState.FAILED, 2.0, "x")
    assert t.restart_delay(job) is None


async def test_dispatch_limits_count_bytes_like_the_room() -> None:
    from roomline.auth import Claims, VideoGrant
    from roomline.errors import LimitExceeded
    from roomline_agents.service.agents import AgentDispatchService
    from sfu.roomstate import Limits

    class FakeManager:
        node = type("N", (), {"rooms": type("R", (), {"limits": Limits(max_attributes_size=10)})})

        def check_agent(self, name: str) -> None:
            return None

    service = AgentDispatchService(FakeManager())  # type: ignore[arg-type]
    claims = Claims(video=VideoGrant(room_admin=True, room="r"))
    req = agent_dispatch.CreateAgentDispatchRequest(
        room="r",
        agent_name="echo",
        attributes={"k": "ééééé"},  # 6 characters, 11 bytes
    )
    with pytest.raises(LimitExceeded, match="attributes larger than 10 bytes"):
        await service.create(req, claims)
