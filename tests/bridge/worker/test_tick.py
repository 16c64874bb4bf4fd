"""The worker's wake-up rule (bridge/worker/tick.py) on simulated clock-thread timings."""

from __future__ import annotations

from bridge.worker.tick import MISSED_TICKS, TICK_GAP_S, TickGate, TickStats

PERIOD = 0.020
POLL = 0.020


def _tick(gate: TickGate, start: float, ports: int, spacing: float = 0.0003) -> list[bool]:
    """One tick's deliveries, ``spacing`` apart; what :meth:`TickGate.delivered` answered."""
    return [gate.delivered(start + i * spacing) for i in range(ports)]


def test_wakes_once_per_tick_after_the_last_port() -> None:
    gate = TickGate()
    gate.ports = 4
    for k in range(50):
        assert _tick(gate, 1.0 + k * PERIOD, 4) == [False, False, False, True]
    assert gate.stats.clock == 50
    assert gate.stats.short_ticks == 0


def test_a_timer_service_in_the_middle_of_a_tick_does_not_shift_the_count() -> None:
    """The old rule reset the count in every service; a service run by the timer between the
    2nd and 3rd delivery then made the wake-up come after the 2nd port of every later tick."""
    gate = TickGate()
    gate.ports = 4
    t = 1.0
    assert gate.delivered(t) is False
    assert gate.delivered(t + 0.0003) is False
    gate.serviced(t + 0.0004)  # the timer ran the service here
    assert gate.delivered(t + 0.0006) is False
    assert gate.delivered(t + 0.0009) is True
    for k in range(1, 10):
        assert _tick(gate, t + k * PERIOD, 4)[-1] is True
    assert gate.stats.clock == 10


def test_a_port_that_misses_its_frame_leaves_the_tick_to_the_timer() -> None:
    gate = TickGate()
    gate.ports = 4
    assert _tick(gate, 1.0, 3) == [False, False, False]  # one port delivered nothing
    assert _tick(gate, 1.0 + PERIOD, 4) == [False, False, False, True]
    assert gate.stats.short_ticks == 1
    # The last service was long ago: the timer stands in once the missed-tick wait has passed.
    gate.serviced(0.99)
    assert not gate.timer_due(0.99 + MISSED_TICKS * POLL - 0.001, POLL)
    assert gate.timer_due(0.99 + MISSED_TICKS * POLL, POLL)
    assert gate.stats.timer == 1


def test_the_timer_stays_out_while_clock_wake_ups_come() -> None:
    """With ports open, a timer firing between two clock-driven services runs nothing (before,
    about one timer firing in four ran an extra, empty service)."""
    gate = TickGate()
    gate.ports = 2
    t = 5.0
    ran = 0
    for k in range(200):
        tick = t + k * PERIOD
        if _tick(gate, tick, 2)[-1]:
            gate.serviced(tick + 0.001)
        # A 20 ms timer out of phase with the clock, at every phase in turn.
        if gate.timer_due(tick + 0.001 + (k % 19) * 0.001, POLL):
            ran += 1
    assert ran == 0
    assert gate.stats.clock == 200


def test_without_ports_the_timer_drives_the_loop() -> None:
    gate = TickGate()
    assert gate.timer_due(0.0, POLL)  # never serviced
    gate.serviced(0.0)
    assert not gate.timer_due(0.014, POLL)
    assert gate.timer_due(0.015, POLL)  # three quarters of a period
    gate.serviced(0.015)
    assert not gate.timer_due(0.015 + 0.074, 0.1)
    assert gate.timer_due(0.015 + 0.076, 0.1)  # the idle period
    assert gate.stats.timer == 0  # the timer's own job, not a missed wake-up


def test_a_port_opened_or_closed_between_ticks_takes_effect_at_the_next_tick() -> None:
    gate = TickGate()
    gate.ports = 1
    assert _tick(gate, 1.0, 1) == [True]
    gate.ports = 2
    assert _tick(gate, 1.0 + PERIOD, 2) == [False, True]
    gate.ports = 1
    assert _tick(gate, 1.0 + 2 * PERIOD, 1) == [True]
    assert gate.stats.short_ticks == 0


def test_deliveries_closer_than_the_gap_are_one_tick() -> None:
    """A clock thread preempted for a few ms in the middle of a tick still counts one tick."""
    gate = TickGate()
    gate.ports = 3
    assert gate.delivered(1.0) is False
    assert gate.delivered(1.0 + TICK_GAP_S * 0.9) is False
    assert gate.delivered(1.0 + TICK_GAP_S * 1.8) is True


def test_log_line_parses_back() -> None:
    st = TickStats(clock=350, timer=2, short_ticks=1)
    line = st.log_line()
    assert TickStats.parse(f"call abc ended; {line}") == st
    assert TickStats.parse(line.replace("350", "x")) is None  # invalid: not a count
    assert TickStats.parse(line[: line.index(" by the timer")]) is None  # truncated
    assert TickStats.parse("") is None
