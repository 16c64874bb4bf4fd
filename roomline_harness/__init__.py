"""The harness that drives a real appliance and real peers from outside, shared by ``tests/`` and
``bench/``: no fixtures and no tests live here, and nothing here imports ``tests``. Production
code never imports it (``tests/meta/test_import_graph.py`` checks both), and the wheel leaves it out.

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

The benchmarks use the same peers and server harness as the tests, so a figure in ``bench/`` and a
check in ``tests/`` exercise one setup; neither the harness nor ``bench/`` imports a test module.
"""
