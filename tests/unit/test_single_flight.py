"""SingleFlight: one leader per key; waiters share a client-facing failure."""

from __future__ import annotations

import trio

from pictrs_trio.rules.errors import UnsupportedMedia
from pictrs_trio.services.single_flight import SingleFlight


async def test_waiters_share_the_leaders_error() -> None:
    flights = SingleFlight()
    runs = 0
    outcomes: list[str] = []

    async def attempt() -> None:
        nonlocal runs
        try:
            async with flights.lead_or_wait("k") as leading:
                if leading:
                    runs += 1
                    await trio.sleep(0.1)
                    raise UnsupportedMedia("not an image")
                outcomes.append("retry")
        except UnsupportedMedia as exc:
            outcomes.append(exc.msg)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(attempt)
    assert runs == 1
    assert outcomes == ["not an image"] * 5


async def test_waiters_try_again_after_a_cancelled_leader() -> None:
    flights = SingleFlight()
    results: list[bool] = []
    leader_scope = trio.CancelScope()

    async def leader(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with leader_scope:
            async with flights.lead_or_wait("k") as leading:
                assert leading
                task_status.started()
                await trio.sleep_forever()

    async def waiter() -> None:
        async with flights.lead_or_wait("k") as leading:
            results.append(leading)

    async with trio.open_nursery() as nursery:
        await nursery.start(leader)
        nursery.start_soon(waiter)
        await trio.sleep(0.05)
        leader_scope.cancel()  # the leader gives up (say, its request's deadline)
    assert results == [False]  # the waiter is told to look again, not handed an error
    async with flights.lead_or_wait("k") as leading:  # the key is free again
        assert leading
