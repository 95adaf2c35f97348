"""The scheduler's policy alone: admission, slots, micro-batches, finishing. No processes, no torch."""

import sys

import pytest

from chipfuse.runtime.scheduler import CANCELLED, LENGTH, STOP, Request, Scheduler


def req(i: int, prompt_len: int = 3, max_tokens: int = 4, stop: set[int] = frozenset(), greedy: bool = True) -> Request:
    return Request(i, list(range(100, 100 + prompt_len)), max_tokens, stop_ids=frozenset(stop), greedy=greedy)


def run_one(s: Scheduler, token: int = 7) -> list[Request]:
    """Complete the oldest in-flight batch with `token` for every request in it."""
    return s.complete([token] * len(s.oldest.requests))


def test_importing_the_scheduler_needs_no_torch():
    import subprocess

    code = "import sys, chipfuse.runtime.scheduler; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_admission_waits_for_a_free_slot_in_arrival_order():
    s = Scheduler(slots=2, max_inflight=4)
    a, b, c = req(0), req(1), req(2)
    for r in (a, b, c):
        s.submit(r)
    retired, batches = s.step()
    assert not retired
    assert [mb.requests for mb in batches] == [(a,), (b,)]  # c has no slot
    assert (a.slot, b.slot, c.slot) == (0, 1, -1)
    assert list(s.waiting) == [c] and not s.free_slots


def test_a_freed_slot_is_reused_by_the_next_waiting_request():
    s = Scheduler(slots=1, max_inflight=2)
    a, b = req(0, max_tokens=1), req(1)
    s.submit(a)
    s.submit(b)
    s.step()
    assert b.slot == -1
    finished = run_one(s)
    assert finished == [a] and a.finish_reason == LENGTH and s.free_slots == [0]
    _, batches = s.step()
    assert b.slot == 0 and batches[0].requests == (b,) and batches[0].prefill


def test_prefill_goes_alone_then_ready_requests_decode_together():
    s = Scheduler(slots=4, max_inflight=1)
    a, b = req(0, prompt_len=5), req(1, prompt_len=2)
    s.submit(a)
    s.submit(b)
    _, batches = s.step()
    assert len(batches) == 1 and batches[0].prefill
    assert batches[0].segs == ((a.slot, 0, 5),) and batches[0].token_ids == a.prompt
    assert s.step()[1] == []  # one in flight at most
    run_one(s, 11)  # a's first token
    _, batches = s.step()
    assert batches[0].requests == (b,) and batches[0].prefill  # waiting prompts go before decoding
    run_one(s, 12)
    _, batches = s.step()
    mb = batches[0]
    assert not mb.prefill and mb.requests == (a, b)
    assert mb.segs == ((a.slot, 5, 1), (b.slot, 2, 1)) and mb.token_ids == [11, 12]


def test_one_micro_batch_per_die_in_flight_and_results_in_order():
    s = Scheduler(slots=4, max_inflight=3)
    rs = [req(i) for i in range(4)]
    for r in rs:
        s.submit(r)
    _, batches = s.step()
    assert [mb.requests for mb in batches] == [(rs[0],), (rs[1],), (rs[2],)]
    assert s.oldest is batches[0]
    run_one(s)
    _, batches = s.step()
    assert [mb.requests for mb in batches] == [(rs[3],)]  # the waiting prompt before rs[0]'s decode
    run_one(s)
    _, batches = s.step()
    assert [mb.requests for mb in batches] == [(rs[0], rs[1])]


def test_decode_batches_are_capped_at_max_seqs():
    s = Scheduler(slots=5, max_inflight=5, max_seqs=2)
    rs = [req(i) for i in range(5)]
    for r in rs:
        s.submit(r)
    s.step()
    for _ in range(5):
        run_one(s)
    _, batches = s.step()
    assert [len(mb.requests) for mb in batches] == [2, 2, 1]


def test_finish_reasons_length_and_stop_and_positions():
    s = Scheduler(slots=2, max_inflight=1)
    a, b = req(0, prompt_len=3, max_tokens=2), req(1, stop={9})
    s.submit(a)
    s.submit(b)
    s.step()
    assert run_one(s, 5) == [] and a.pos == 3 and a.next_token == 5
    s.step()
    assert run_one(s, 5) == []
    s.step()
    assert s.oldest.requests == (a, b)
    assert s.complete([6, 9]) == [a, b]
    assert (a.finish_reason, b.finish_reason) == (LENGTH, STOP)
    assert a.generated == [5, 6] and b.generated == [5, 9] and a.pos == 4
    assert sorted(s.free_slots) == [0, 1] and not s.active


def test_cancel_of_a_ready_request_frees_its_slot_at_the_next_step():
    s = Scheduler(slots=1, max_inflight=1)
    a, b = req(0, max_tokens=100), req(1)
    s.submit(a)
    s.submit(b)
    s.step()
    run_one(s)
    a.cancelled = True  # as Generation.cancel does, from any thread
    retired, batches = s.step()
    assert retired == [a] and a.finish_reason == CANCELLED and a.started
    assert b.slot == 0 and batches[0].requests == (b,)  # the slot went straight to the next request


def test_cancel_while_in_flight_finishes_when_the_batch_returns():
    s = Scheduler(slots=1, max_inflight=1)
    a = req(0, max_tokens=100)
    s.submit(a)
    s.step()
    a.cancelled = True
    assert s.step() == ([], [])  # nothing to retire: its batch is still on the dies
    assert run_one(s) == [a] and a.finish_reason == CANCELLED and s.free_slots == [0]


def test_cancel_before_admission_never_takes_a_slot():
    s = Scheduler(slots=1, max_inflight=1)
    a, b = req(0), req(1)
    s.submit(a)
    s.submit(b)
    s.step()
    b.cancelled = True
    retired, _ = s.step()
    assert retired == [b] and b.slot == -1 and not b.started


def test_greedy_flag_only_when_every_request_is_greedy():
    s = Scheduler(slots=2, max_inflight=1)
    a, b = req(0), req(1, greedy=False)
    s.submit(a)
    s.submit(b)
    assert s.step()[1][0].greedy
    run_one(s)
    assert not s.step()[1][0].greedy
    run_one(s)
    assert not s.step()[1][0].greedy


def test_unfinished_lists_admitted_and_waiting_requests():
    s = Scheduler(slots=1, max_inflight=1)
    a, b = req(0), req(1)
    s.submit(a)
    s.submit(b)
    s.step()
    assert set(map(id, s.unfinished())) == {id(a), id(b)}


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        Scheduler(slots=0, max_inflight=1)


def test_a_long_prompt_goes_in_chunks_with_decode_steps_between_them():
    """A running request keeps decoding while a 7-token prompt is sent 3 tokens at a time; the new request's
    first token comes from its last piece only."""
    s = Scheduler(slots=2, max_inflight=1, prefill_chunk=3)
    a = req(0, prompt_len=2, max_tokens=10)
    s.submit(a)
    _, (mb,) = s.step()
    assert mb.segs == ((0, 0, 2),) and mb.final
    run_one(s)
    b = req(1, prompt_len=7, max_tokens=2)
    s.submit(b)
    kinds = []
    for _ in range(6):
        _, (mb,) = s.step()
        kinds.append((mb.requests[0].id, mb.segs[0], mb.final))
        run_one(s)
    assert kinds == [(0, (0, 2, 1), True), (1, (1, 0, 3), False), (0, (0, 3, 1), True), (1, (1, 3, 3), False),
                     (0, (0, 4, 1), True), (1, (1, 6, 1), True)]
    assert b.generated == [7] and b.pos == 7  # one token, after the whole prompt


def test_a_chunk_is_chosen_by_the_die_when_nobody_needs_its_token():
    s = Scheduler(slots=1, max_inflight=2, prefill_chunk=4)
    r = req(0, prompt_len=6, greedy=False)
    s.submit(r)
    _, batches = s.step()
    assert [(mb.final, mb.greedy) for mb in batches] == [(False, True), (True, False)]


def test_a_request_cancelled_between_its_chunks_is_retired_and_its_slot_freed():
    s = Scheduler(slots=1, max_inflight=1, prefill_chunk=2)
    r = req(0, prompt_len=6)
    s.submit(r)
    s.step()
    r.cancelled = True
    assert run_one(s) == []  # the piece in flight comes back: nothing to record
    retired, batches = s.step()
    assert retired == [r] and r.finish_reason == CANCELLED and not batches and s.free_slots == [0]
    with pytest.raises(ValueError):
        Scheduler(slots=1, max_inflight=1, prefill_chunk=0)
