"""The per-host connection cap (transforms/hosts.py): it grows while a host keeps up, halves when it pushes back."""

from __future__ import annotations

import asyncio

import pytest

from altsieve.core.config import ConfigError, load_config
from altsieve.transforms.hosts import HostLimits, HostState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _host(start: int, most: int, clock: Clock) -> HostState:
    limits = HostLimits(concurrency=start, max_concurrency=most, requests_per_s=None, burst=1, breaker_failures=10,
                        breaker_cooldown_s=60)
    return HostState(limits, clock)


async def _holders(host: HostState, count: int) -> tuple[list[asyncio.Task[None]], list[asyncio.Event], list[int]]:
    """``count`` requests that take a slot each, hold it until their event is set, and note when they got it."""
    got: list[int] = []
    events = [asyncio.Event() for _ in range(count)]

    async def hold(index: int) -> None:
        async with host.slot():
            got.append(index)
            await events[index].wait()

    tasks = [asyncio.create_task(hold(index)) for index in range(count)]
    await asyncio.sleep(0)
    return tasks, events, got


async def _finish(tasks: list[asyncio.Task[None]], events: list[asyncio.Event]) -> None:
    """Every holder lets go, and ends."""
    for event in events:
        event.set()
    await asyncio.gather(*tasks)


def test_slow_start_then_capped() -> None:
    async def scenario() -> None:
        host = _host(2, 5, Clock())
        tasks, events, got = await _holders(host, 8)
        assert got == [0, 1] and host.concurrency == 2
        for expected in (3, 4, 5, 5):  # one more connection an answer while URLs wait, up to the cap
            host.answered(started=0.0, pushback=False)
            await asyncio.sleep(0)
            assert host.concurrency == expected and len(got) == expected
        await _finish(tasks, events)

    asyncio.run(scenario())


def test_no_growth_without_waiting_urls() -> None:
    async def scenario() -> None:
        host = _host(2, 8, Clock())
        tasks, events, _ = await _holders(host, 2)
        for _ in range(5):
            host.answered(started=0.0, pushback=False)
        assert host.concurrency == 2
        await _finish(tasks, events)

    asyncio.run(scenario())


def test_pushback_halves_once_per_round_then_growth_is_additive() -> None:
    async def scenario() -> None:
        clock = Clock()
        host = _host(8, 16, clock)
        tasks, events, got = await _holders(host, 12)
        assert len(got) == 8
        assert host.answered(started=clock.now - 1, pushback=True)  # a 429
        assert host.concurrency == 4
        assert not host.answered(started=clock.now - 1, pushback=True)  # sent with it, before the cut: the same
        assert host.concurrency == 4
        for index in range(8):  # the eight held slots end: a waiter starts only once fewer than 4 are held
            events[index].set()
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert len(got) == (8 if index < 4 else index + 5)
        assert len(got) == 12 and host.concurrency == 4
        clock.now += 1
        for _ in range(4):
            host.answered(started=clock.now, pushback=False)
        assert host.concurrency == 4  # nothing waits now: no growth
        clock.now += 1
        host.answered(started=clock.now, pushback=True)
        host.answered(started=clock.now + 1, pushback=True)  # sent after that cut: cuts again
        assert host.concurrency == 1
        assert not host.answered(started=clock.now + 2, pushback=True)
        assert host.concurrency == 1  # never below one
        await _finish(tasks, events)

    asyncio.run(scenario())


def test_additive_growth_after_pushback() -> None:
    async def scenario() -> None:
        clock = Clock()
        host = _host(4, 8, clock)
        tasks, events, got = await _holders(host, 10)
        host.answered(started=clock.now, pushback=True)
        assert host.concurrency == 2
        for _ in range(2):  # two answers at two connections: one more
            host.answered(started=clock.now, pushback=False)
        assert host.concurrency == 3
        for _ in range(2):
            host.answered(started=clock.now, pushback=False)
        assert host.concurrency == 3  # three answers needed now
        host.answered(started=clock.now, pushback=False)
        assert host.concurrency == 4
        await _finish(tasks, events)
        assert len(got) == 10

    asyncio.run(scenario())


def test_a_fixed_cap_never_moves_up() -> None:
    async def scenario() -> None:
        host = _host(3, 3, Clock())
        tasks, events, got = await _holders(host, 6)
        for _ in range(10):
            host.answered(started=0.0, pushback=False)
        await asyncio.sleep(0)
        assert host.concurrency == 3 and len(got) == 3
        await _finish(tasks, events)

    asyncio.run(scenario())


def test_a_cancelled_waiter_leaks_no_slot() -> None:
    async def scenario() -> None:
        host = _host(1, 1, Clock())
        tasks, events, got = await _holders(host, 3)
        tasks[1].cancel()  # waiting for the one slot
        await asyncio.sleep(0)
        events[0].set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert got == [0, 2]  # the slot went past the cancelled waiter
        events[2].set()
        await asyncio.gather(tasks[0], tasks[2])
        assert host.users == 0
        tasks2, events2, got2 = await _holders(host, 1)
        assert got2 == [0]  # and it is free again
        events2[0].set()
        await asyncio.gather(*tasks2)

    asyncio.run(scenario())


def test_a_cap_below_the_start_is_refused_naming_both() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("default", [{"download": {"per_host_concurrency": 100}}])
    message = str(caught.value)
    assert "download: " in message and "per_host_concurrency_max (64) is below per_host_concurrency (100)" in message
    fixed = load_config("default", [{"download": {"per_host_concurrency": 100, "per_host_concurrency_max": 100}}])
    assert fixed.download.per_host_concurrency_max == 100
