"""Order the dies along the topology: the route a hidden state takes from stage to stage."""

from __future__ import annotations

import itertools

from ..hw.spec import HOST, System
from ..sim.perf import transfer_s

EXACT_MAX_DIES = 7  # permutations up to 7! = 5040 routes are cheap to enumerate


def hop_costs(system: System, dies: list[str], nbytes: float) -> dict[tuple[str, str], float]:
    nodes = [HOST, *dies]
    return {(a, b): transfer_s(system, a, b, nbytes) for a in nodes for b in nodes if a != b}


def route_cost(order: tuple[str, ...], cost: dict[tuple[str, str], float]) -> float:
    path = (HOST, *order, HOST)
    return sum(cost[a, b] for a, b in zip(path, path[1:]))


def die_order(system: System, dies: list[str], nbytes: float) -> list[str]:
    """Dies in the order that makes host -> d1 -> ... -> dk -> host cheapest for `nbytes` per hop.

    Exact (all permutations) up to 7 dies; nearest-neighbour from the host beyond. Ties keep
    the order the system file lists the dies in.
    """
    cost = hop_costs(system, dies, nbytes)
    if len(dies) <= EXACT_MAX_DIES:
        best = min(itertools.permutations(dies), key=lambda o: route_cost(o, cost))
        return list(best)
    order, left, here = [], list(dies), HOST
    while left:
        nxt = min(left, key=lambda d: cost[here, d])
        order.append(nxt)
        left.remove(nxt)
        here = nxt
    return order
