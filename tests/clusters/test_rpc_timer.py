"""The RPC connection's call timer (pool/xprotocol.py ``_Timer``) on trio's mock clock: calls
expire at their own deadlines whatever their timeout, a call that waited for its connection
is queued in deadline order, and answers out of order cannot grow a queue without bound."""

from __future__ import annotations

import trio

from trio_mesh.pool.xprotocol import _Slot, _Timer


async def test_calls_expire_at_their_own_deadlines(autojump_clock):
    pending: dict[int, _Slot] = {}
    timer = _Timer(pending)
    now = trio.current_time()
    slots = {}
    for rid, timeout in enumerate([3.0, 1.0, 3.0, 2.0, 1.0, 2.0]):
        slots[rid] = pending[rid] = _Slot(now + timeout)
        timer.add(slots[rid], timeout)
    late = pending[9] = _Slot(now + 1.5)  # waited for its connection: an earlier deadline
    timer.add(late, 2.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer.run)
        expired_at: dict[int, float] = {}
        for step in (0.5, 1.25, 1.75, 2.5, 3.5):
            await trio.sleep_until(now + step)
            for rid, slot in pending.items():
                if slot.expired and rid not in expired_at:
                    expired_at[rid] = step
        nursery.cancel_scope.cancel()
    assert expired_at == {1: 1.25, 4: 1.25, 9: 1.75, 3: 2.5, 5: 2.5, 0: 3.5, 2: 3.5}


async def test_an_answered_call_is_not_expired_and_queues_stay_bounded(autojump_clock):
    pending: dict[int, _Slot] = {}
    timer = _Timer(pending)
    now = trio.current_time()
    head = pending[0] = _Slot(now + 1.0)
    queue = timer.add(head, 1.0)  # never answered: it holds the head of the queue
    for rid in range(1, 1000):
        slot = pending[rid] = _Slot(now + 1.0)
        timer.add(slot, 1.0)
        del pending[rid]
        slot.done = True  # answered behind the head, out of order
        assert len(queue) <= 66
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer.run)
        await trio.sleep(2.0)
        nursery.cancel_scope.cancel()
    assert head.expired and not queue
