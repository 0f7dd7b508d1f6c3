import asyncio

from bot.scheduler import Scheduler


def test_round_robin_keeps_channel_order_and_positions():
    s = Scheduler(llm=None)
    a1, a2, a3 = s.enter("A"), s.enter("A"), s.enter("A")
    b1, c1 = s.enter("B"), s.enter("C")
    assert a1.running and len(s) == 5
    # A's second question came first, but its third waits until B and C had a turn.
    assert [s.position(t) for t in (a2, b1, c1, a3)] == [1, 2, 3, 4]
    served = []
    for _ in range(5):
        running = next(t for t in (a1, a2, a3, b1, c1) if t.running and t not in served)
        served.append(running)
        s.leave(running)
    assert served == [a1, a2, b1, c1, a3] and len(s) == 0
    s.close()


def test_leaving_while_waiting_and_twice():
    s = Scheduler(llm=None)
    a1, a2, b1 = s.enter("A"), s.enter("A"), s.enter("B")
    s.leave(a2)  # gave up while waiting
    s.leave(a2)
    assert s.position(b1) == 1 and len(s) == 2
    s.leave(a1)
    assert b1.running
    s.close()


async def test_wait_turn_reports_positions_until_running():
    s = Scheduler(llm=None)
    first, second, third = s.enter("A"), s.enter("B"), s.enter("C")
    seen = []

    async def wait(ticket):
        async for position in s.wait_turn(ticket):
            seen.append(position)

    task = asyncio.create_task(wait(third))
    await asyncio.sleep(0.01)
    s.leave(first)
    await asyncio.sleep(0.01)
    s.leave(second)
    await asyncio.wait_for(task, 1)
    assert seen == [2, 1] and third.running
    s.close()


def test_parallel_slots_serve_several_channels_but_one_turn_per_channel():
    s = Scheduler(llm=None, parallel=3)
    a1, a2, b1, c1, d1 = s.enter("A"), s.enter("A"), s.enter("B"), s.enter("C"), s.enter("D")
    # Three slots: A, B and C run together; A's second question waits for A's first although D waits too.
    assert [t.running for t in (a1, a2, b1, c1, d1)] == [True, False, True, True, False]
    assert len(s) == 5 and s.position(a2) == 1 and s.position(d1) == 2
    s.leave(b1)  # a free slot, and A is still busy: D goes first
    assert d1.running and not a2.running
    s.leave(a1)
    assert a2.running and len(s) == 3
    s.close()
