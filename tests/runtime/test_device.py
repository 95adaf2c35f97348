"""The runtime: dies behind one Device give the reference's tokens, fail loudly, batch concurrent requests."""

import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from chipfuse.api import open_device
from chipfuse.errors import FitError
from chipfuse.hw.load import load_system, parse_system
from chipfuse.runtime.device import DeviceError
from tests.runtime.conftest import kill_die_mid_answer, reference_tokens

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def reference(smollm2_gguf):
    """Single-process greedy tokens at the runtime's default precision (int4 layers, int8 head)."""
    return reference_tokens(smollm2_gguf, 20, context=512, batch=4)


@pytest.mark.parametrize("system,dies", [("talk-medium-d2d", None), ("talk-heavy-2die-d2d", None),
                                         ("talk-4die-d2d", 3), ("talk-4die-d2d", None)])
def test_greedy_tokens_identical_to_single_process_reference(reference, system, dies):
    ids, want = reference
    with open_device(system, context=512, dies=dies) as dev:
        assert len(dev.plan.stages) == (dies or len(load_system(system).dies))
        for prompt, expect in zip(ids, want):
            g = dev.submit(prompt, 20, stop_ids=set())
            list(g)
            assert g.tokens == expect
        for r in dev.memory_report():
            assert r["resident_weight_bytes"] <= r["die_memory_bytes"]
            assert r["resident_weight_bytes"] == pytest.approx(r["plan_weight_bytes"], rel=0.01)


def test_concurrent_requests_keep_their_own_sampling_and_cache(reference):
    ids, want = reference
    with open_device("talk-4die-d2d", context=512) as dev:
        alone = dev.submit(ids[1], 12, temperature=0.8, top_k=40, top_p=0.9, seed=7, stop_ids=set())
        list(alone)
        gens = [dev.submit(ids[0], 20, stop_ids=set()), dev.submit(ids[1], 20, stop_ids=set()),
                dev.submit(ids[1], 12, temperature=0.8, top_k=40, top_p=0.9, seed=7, stop_ids=set()),
                dev.submit(ids[0], 20, stop_ids=set())]
        texts = [None] * 4

        def drain(i):
            texts[i] = "".join(gens[i])

        threads = [threading.Thread(target=drain, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert gens[0].tokens == want[0] and gens[3].tokens == want[0]
        assert gens[1].tokens == want[1]
        assert gens[2].tokens == alone.tokens  # seeded sampling is reproducible under batching


def test_killed_worker_is_a_clear_error_and_no_process_is_left(smollm2_gguf):
    dev = open_device("talk-4die-d2d", context=1024)
    err = kill_die_mid_answer(dev, 1, 900)
    assert "die1" in err and "signal 9" in err
    with pytest.raises(DeviceError):
        dev.submit("hello", 4)


def test_model_that_does_not_fit_fails_before_any_worker_starts(base_system):
    base_system["die_types"]["npu"]["memory"]["own"]["capacity_gib"] = 0.03
    tiny = parse_system(base_system, "tiny")
    before = set(os.listdir("/proc"))
    with pytest.raises(FitError, match="does not fit"):
        open_device(tiny, precision="fp32", context=512)
    assert not torch.distributed.is_initialized()
    del before


def test_workers_started_by_hand_join_over_tcp(reference):
    """The multi-host path: `chipfuse worker --rank K --master HOST:PORT`, here all on loopback."""
    from chipfuse.runtime.device import _free_port, worker_env

    ids, want = reference
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "chipfuse.cli.main", "worker", "--rank", str(r), "--world", "3",
                               "--master", f"127.0.0.1:{port}", "--timeout", "120"], env=worker_env())
             for r in (1, 2)]
    try:
        with open_device("talk-heavy-2die-d2d", context=512, spawn=False, master=f"127.0.0.1:{port}") as dev:
            g = dev.submit(ids[0], 20, stop_ids=set())
            list(g)
            assert g.tokens == want[0]
        for p in procs:
            assert p.wait(timeout=30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_killed_host_leaves_no_orphan_worker(tmp_path):
    """SIGKILL the host process: its workers notice and exit (parent watchdog)."""
    script = tmp_path / "host.py"
    script.write_text(
        "import sys, time\n"
        "from chipfuse.api import open_device\n"
        "dev = open_device('talk-heavy-2die-d2d', context=256)\n"
        "print(' '.join(str(p.pid) for p in dev._procs), flush=True)\n"
        "time.sleep(600)\n")
    host = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in host.stdout.readline().split()]
        assert len(pids) == 2
        host.kill()
        host.wait(10)
        deadline = time.monotonic() + 20
        alive = pids
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [p for p in alive if os.path.exists(f"/proc/{p}") and
                     open(f"/proc/{p}/stat").read().split()[2] != "Z"]
        assert not alive, f"orphan workers: {alive}"
    finally:
        if host.poll() is None:
            host.kill()


def test_a_second_device_in_the_same_process_says_why_and_what_to_do():
    """One Device per process: the host joins torch.distributed's default group. No worker of the second starts."""
    with open_device("talk-heavy-2die-d2d", context=256) as dev:
        before = {p.pid for p in dev._procs}
        with pytest.raises(DeviceError, match="close it first.*another process.*default process group"):
            open_device("talk-heavy-2die-d2d", context=256)
        assert {p.pid for p in dev._procs} == before
        g = dev.submit("Hello", 3, stop_ids=set())
        list(g)
        assert len(g.tokens) == 3  # the first one is unharmed


def test_a_full_pipeline_with_long_prompts_never_waits_on_itself():
    """Four dies, four slots, twelve requests with prompts too long to travel inline: the host keeps sending
    while the last die's results come back (gloo sends complete only when the peer receives; a host that
    only sends then receives deadlocked here). Every request finishes, within a bound against hanging."""
    import random

    rng = random.Random(5)
    words = "sea ship harbour light keeper storm wave rock island gull night lamp".split()
    prompts = [" ".join(rng.choice(words) for _ in range(rng.randint(60, 200))) for _ in range(12)]
    done: dict[int, int] = {}
    with open_device("talk-4die-d2d", None, "int4", context=512, max_batch=4) as dev:
        def go(i: int) -> None:
            g = dev.submit(prompts[i], 6 + i, stop_ids=set())
            list(g)
            done[i] = len(g.tokens)

        threads = [threading.Thread(target=go, args=(i,), daemon=True) for i in range(12)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
    assert done == {i: 6 + i for i in range(12)}


def test_prompts_in_chunks_give_the_same_tokens_and_interleave_with_decoding(reference):
    """Prompts sent two tokens at a time (the KV cache continued across pieces): every greedy answer is the
    reference's, with two requests running at once."""
    ids, want = reference
    with open_device("talk-4die-d2d", context=512, prefill_chunk=2) as dev:
        gens = [dev.submit(ids[0], 20, stop_ids=set()), dev.submit(ids[1], 20, stop_ids=set())]
        for g in gens:
            list(g)
    assert [g.tokens for g in gens] == want[:2]
