"""Transfers and collectives on the system's graph: concurrent transfers share the links they cross.

Every transfer takes its quickest route (System.route_nodes). Transfers started together that
cross the same link in the same direction share its bandwidth (links are full duplex), so dies
hanging off one USB host or one PCIe uplink slow each other down. An all-reduce is charged by the
cheaper of two algorithms on the actual routes: a ring (2(k-1) steps of 1/k of the vector) or a
direct exchange (one step, every die sends its whole vector to every other and sums locally). Dies
whose runtime states its own collective latency (emulated dies) pay it once, in place of the routes' latencies.
"""

from __future__ import annotations

from itertools import pairwise

from ..hw.spec import HOST, System


def concurrent_s(system: System, transfers: list[tuple[str, str, float]], latency: bool = True) -> float:
    """Seconds until every (source, destination, bytes) transfer, all started at once, has arrived.

    A transfer pays each hop's latency (unless `latency` is False: the bytes' part alone) plus the bytes of
    every transfer sharing that hop's direction divided by the link's rate (bandwidth shared fairly among them)."""
    paths = [(system.route_nodes(a, b, n), n) for a, b, n in transfers if a != b and n > 0]
    load: dict[tuple[str, str], float] = {}
    for path, n in paths:
        for hop in pairwise(path):
            load[hop] = load.get(hop, 0.0) + n
    worst = 0.0
    for path, _ in paths:
        t = 0.0
        for u, v in pairwise(path):
            link = system.graph.edges[u, v]["link"]
            t += (link.latency_s if latency else 0.0) + load[(u, v)] / link.bytes_per_s
        worst = max(worst, t)
    return worst


def allreduce(system: System, dies: list[str], nbytes: float) -> tuple[float, str]:
    """(seconds, algorithm) to sum a vector of `nbytes` held by every die of `dies` onto all of them."""
    k = len(dies)
    if k < 2 or nbytes <= 0:
        return 0.0, "none"
    own = [system.die_type(d).collective_latency_s for d in dies]
    if all(x is not None for x in own):  # a runtime exchanging directly between every pair (DieType docs)
        return max(x for x in own if x is not None) + concurrent_s(
            system, [(a, b, nbytes) for a in dies for b in dies if a != b], latency=False), "direct"
    ring = 2 * (k - 1) * concurrent_s(system, [(dies[i], dies[(i + 1) % k], nbytes / k) for i in range(k)])
    direct = concurrent_s(system, [(a, b, nbytes) for a in dies for b in dies if a != b])
    return (ring, "ring") if ring < direct else (direct, "direct")


def gather_to_host_s(system: System, parts: list[tuple[str, float]]) -> float:
    """Each die sends its part (bytes) to the host at once: the LM head's vocabulary shards."""
    return concurrent_s(system, [(d, HOST, n) for d, n in parts])


def scatter_from_host_s(system: System, dies: list[str], nbytes: float) -> float:
    """The host sends the same `nbytes` to every die (token ids to a group holding the embedding)."""
    return concurrent_s(system, [(HOST, d, nbytes) for d in dies])


def hand_over_s(system: System, senders: list[str], receivers: list[str], nbytes: float) -> float:
    """A hidden state every sender holds goes to every receiver (the next pipeline position): receiver j
    takes it from sender j mod len(senders), all at once."""
    return concurrent_s(system, [(senders[j % len(senders)], r, nbytes) for j, r in enumerate(receivers)])
