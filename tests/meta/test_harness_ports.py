"""The harness's port space (roomline_harness/net.py): ``ROOMLINE_TEST_UDP_RANGE`` narrows it, which
``.ci/test`` relies on to keep the session running beside the soak out of the soak's ports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from roomline_harness.net import RANGE_ENV, parse_range
from roomline_harness.paths import ROOT
from roomline_harness.server import HARNESS_ENV


def test_parse_range() -> None:
    assert parse_range("20000-27999") == (20000, 27999)


@pytest.mark.parametrize("text", ["", "20000", "20000-", "-20000", "b-c", "30000-20000", "1-70000"])
def test_parse_range_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="expected LOW-HIGH ports"):
        parse_range(text)


def test_udp_ranges_stay_in_the_space_the_environment_names() -> None:
    code = (
        "import json; from roomline_harness.net import free_udp_range, free_block; "
        "b = free_block(50); print(json.dumps([free_udp_range(40) for _ in range(30)] + [[b, b + 49]]))"
    )
    env = dict(os.environ, **{RANGE_ENV: "24000-24499"})
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    ranges = json.loads(out)
    assert len(ranges) == 31
    for first, last in ranges:
        assert 24000 <= first <= last <= 24499, ranges


def test_the_appliance_does_not_see_the_harness_setting() -> None:
    # The appliance reads ROOMLINE_* as config keys and refuses unknown ones.
    assert RANGE_ENV in HARNESS_ENV
