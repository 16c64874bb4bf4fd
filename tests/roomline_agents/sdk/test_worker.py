"""roomline_agents/sdk/worker.py: loading an entrypoint from its registry string."""

from __future__ import annotations

import pytest

from roomline_agents.sdk.worker import load_entrypoint


def test_load_entrypoint_errors() -> None:
    assert callable(load_entrypoint("roomline_agents.examples.echo:entrypoint"))
    with pytest.raises(ModuleNotFoundError):
        load_entrypoint("no.such.module:f")
    with pytest.raises(AttributeError):
        load_entrypoint("roomline_agents.examples.echo:nope")
    with pytest.raises(TypeError):
        load_entrypoint("roomline_agents.examples.echo:MAX_TURN_SECONDS")
