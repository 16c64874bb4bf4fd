"""Helpers shared by the tests (and the benchmarks): no fixtures and no tests live here.

* :mod:`.paths` — repository and test-data paths; :mod:`.captures` — captured packets.
* :mod:`.net` — free TCP/UDP ports and UDP port ranges for peers that cannot bind port 0 themselves.
* :mod:`.aio` — :func:`~.aio.wait_for`, polling a condition with a deadline.
* :mod:`.server` — a real ``roomline serve`` subprocess (port 0; the bound port from ``--port-file``).
* :mod:`.audio` — tones, WAV files, FFT and SNR checks.
* :mod:`.lk` — the LiveKit Python SDK as a test peer (tokens, tone publisher, recorder).
* :mod:`.standin_room` — a minimal local-channel server standing in for the SFU in bridge tests.
* :mod:`.bridge` — a supervised bridge worker with a scripted INVITE policy.
* :mod:`.sip_rules` — builders for SIP trunks, dispatch rules and inbound calls.
* :mod:`.fixture_agents` — agents registered by the agent tests.
* :mod:`.sip` — SIP peers: SIPp, the pjsua2 test phone, pcap writing, full-stack helpers.
* :mod:`.web` — headless Chromium driven through playwright-core.
* :mod:`.child_process` — a scripted child for the process-supervision tests.

The benchmarks (``bench/``) use these helpers too (the same peers and server harness); they never
import ``conftest`` or a test module (``tests/meta/test_import_graph.py`` checks both).
"""
