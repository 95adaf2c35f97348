"""Quickest routes on a system's graph, with USB's host-centred traffic.

USB has no peer-to-peer: every transfer is between the host controller and one device. A switch
whose links are all USB is therefore a hub, and a hub forwards only between its upstream port
(the link toward the host) and its downstream ports. Data from one USB device to another goes
up to the host, which relays it, and back down: die -> hub -> host -> hub -> die.

To route under that rule each hub is split in two states: heading up (entered from a downstream
port, may only leave upstream) and heading down (entered from upstream, may only leave through a
downstream port). Dijkstra on that directed graph gives the quickest route obeying the rule; its
nodes map back to the system's names, so a relayed route names the hub twice.

No extra cost is charged for the host's relay (copying the data from one transfer to the next):
no published figure for it was found, so it is zero; the route still pays every hop's latency
and bandwidth, and the hub's upstream link carries the data twice (up and down).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import networkx as nx

UP, DOWN, PLAIN = "up", "down", ""

Weight = Callable[[Any, Any, dict], float]


def usb_hub_uplinks(g: nx.Graph, host: str) -> dict[str, str]:
    """Each USB hub of the graph (a switch whose links are all USB) -> its upstream neighbour.

    The upstream neighbour is the one fewest hops from `host`. Raises ValueError when two
    neighbours are equally close (the hub's upstream port would be ambiguous)."""
    hubs = [n for n, kind in g.nodes(data="kind")
            if kind == "switch" and g.degree(n) and all(e["link"].kind == "usb" for *_, e in g.edges(n, data=True))]
    if not hubs:
        return {}
    hops = nx.single_source_shortest_path_length(g, host)
    out: dict[str, str] = {}
    for hub in hubs:
        near = sorted((hops[n], n) for n in g.neighbors(hub) if n in hops)
        if not near:
            continue  # not connected to the host: no route uses it
        if len(near) > 1 and near[0][0] == near[1][0]:
            raise ValueError(
                f"switch {hub}: all its links are USB, so it is a USB hub with one upstream port toward the host, "
                f"but {near[0][1]} and {near[1][1]} are equally close to the host; link the hub to the host or to "
                f"the hub above it (or make one of the links another kind)")
        out[hub] = near[0][1]
    return out


def relay_graph(g: nx.Graph, uplinks: dict[str, str]) -> nx.DiGraph:
    """The directed routing graph: nodes are (name, state); hubs have an 'up' and a 'down' state."""
    dg: nx.DiGraph = nx.DiGraph()
    for u, v, data in g.edges(data=True):
        for a, b in ((u, v), (v, u)):
            src = (a, (UP if b == uplinks[a] else DOWN)) if a in uplinks else (a, PLAIN)
            dst = (b, (DOWN if a == uplinks[b] else UP)) if b in uplinks else (b, PLAIN)
            dg.add_edge(src, dst, **data)
    return dg


def _states(node: str, uplinks: dict[str, str]) -> list[tuple[str, str]]:
    return [(node, UP), (node, DOWN)] if node in uplinks else [(node, PLAIN)]


def relayed_path(dg: nx.DiGraph, uplinks: dict[str, str], a: str, b: str, weight: Weight) -> list[str]:
    """Quickest route from a to b on the relay graph, as system node names (a hub may appear twice)."""
    starts, ends = _states(a, uplinks), _states(b, uplinks)
    for node in (starts[0], ends[0]):
        if node not in dg:
            raise nx.NodeNotFound(f"node {node[0]!r} is not in the graph")
    if len(starts) == len(ends) == 1:
        path: Iterable[tuple[str, str]] = nx.shortest_path(dg, starts[0], ends[0], weight=weight)
    else:  # a hub as an end: the better of its two states
        found: list[tuple[float, list[tuple[str, str]]]] = []
        for s in starts:
            for t in ends:
                try:
                    cost, nodes = nx.bidirectional_dijkstra(dg, s, t, weight=weight)
                except nx.NetworkXNoPath:
                    continue
                found.append((float(cost), list(nodes)))
        if not found:
            raise nx.NetworkXNoPath(f"no path between {a} and {b}")
        path = min(found, key=lambda cost_path: cost_path[0])[1]
    return [n for n, _ in path]
