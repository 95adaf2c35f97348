"""Compact forms of a system file: N identical boards on a switch, a package of N identical dies.

Both are written in a few lines and expanded, before validation, into the ordinary dies, links,
switches and packages (System._expand_compact), so every other part of chipfuse sees the long form.

    boards:                      # or a list of such groups, each with its own prefix
      count: 4                   # 1-64 identical boards
      prefix: b                  # board k's nodes are named b<k>.<name> (default "b")
      board:                     # one board: its dies, switches, links and packages, by local names
        dies: [{name: cpu, type: bcm2712-cpu}]
      uplink: {from: cpu, kind: ethernet-1g}   # each board's link to the switch: Link fields but `between`
      switch: eth-switch         # the switch joining the boards (added to switches)

    packages:
      - {name: npu4, count: 4, die_type: medium}   # dies npu4.die0..npu4.die3, a ring of d2d-package links
      - {name: npu2, count: 2, die_type: medium, links: {topology: chain, kind: d2d-package, latency_us: 0.1}}

Die types stay at the top level (a design is shared, not copied). Whatever is not replicated, such
as the link from the host to one board, is an ordinary top-level entry naming expanded nodes
(`between: [host, b0.cpu]`). Expanded entries follow the written ones, in this order: top-level
dies/links/switches/packages as written (a compact package is replaced by its long form where it
stands), then each compact package's dies and links, then the boards, board 0 first; each board
brings its switch-joining uplink after its own links, and the boards' switch precedes the boards'
own switches.

Problems are reported with the path of the field as written (`boards.uplink.from`, `packages[1].count`)
and what would fix it, all at once, as the loader reports any other field error.
"""

from __future__ import annotations

import difflib
from itertools import combinations
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError

from ..errors import validation_lines
from .spec import HOST, Die, Link, Package, Strict

MAX_DIES = 256  # System.dies' bound
PACKAGE_TOPOLOGIES = ("ring", "chain", "all-pairs", "none")
DEFAULT_PACKAGE_LINK = "d2d-package"


class PackageForm(Strict):
    """The compact keys of a package entry. Its other keys (name, substrate, cost_usd) are Package's."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    count: Literal[1, 2, 4] = Field(description="identical dies in the package (packages hold 1, 2 or 4)")
    die_type: str = Field(description="a key of die_types")
    links: dict[str, Any] = Field(
        default_factory=dict,
        description="topology (ring, chain, all-pairs, none; default ring) and Link fields but between "
                    "(kind defaults to d2d-package)")


class BoardTemplate(Strict):
    """One board, by local names: what every board of a `boards` group holds."""

    dies: list[Die] = Field([], max_length=MAX_DIES)
    switches: list[str] = Field([], max_length=256)
    links: list[Link] = Field([], max_length=4096)
    packages: list[dict[str, Any]] = Field([], max_length=256, description="long or compact package entries")


class BoardGroup(Strict):
    """`count` copies of `board`, each joined to `switch` by one `uplink`."""

    count: int = Field(ge=1, le=64, description="how many identical boards")
    prefix: str = Field("b", min_length=1, max_length=64, description="board k's nodes are named <prefix><k>.<name>")
    board: BoardTemplate
    uplink: dict[str, Any] = Field(description="`from` (a board node) and Link fields but between")
    switch: str = Field(min_length=1, description="the switch joining the boards")


def _field_names() -> list[str]:
    names: set[str] = {"from", "topology"}
    for model in (PackageForm, BoardTemplate, BoardGroup, Link, Die, Package):
        names.update(model.model_fields)
    return sorted(names)


def _suggest(field: str) -> str | None:
    close = difflib.get_close_matches(str(field), _field_names(), n=1, cutoff=0.6)
    return close[0] if close else None


def _is_compact_package(entry: object) -> bool:
    return isinstance(entry, dict) and ("count" in entry or "die_type" in entry)


def uses_compact_forms(data: object) -> bool:
    """Whether a system mapping uses `boards` or a compact package entry."""
    if not isinstance(data, dict):
        return False
    packages = data.get("packages")
    return "boards" in data or (isinstance(packages, list) and any(_is_compact_package(p) for p in packages))


class _Problems:
    """Error lines, each `path: message`, gathered so the user sees them all at once; and the die
    types the file defines (None if die_types itself is malformed: pydantic reports that)."""

    def __init__(self, die_types: list[str] | None) -> None:
        self.lines: list[str] = []
        self.die_types = die_types

    def check_type(self, die_type: str, path: str) -> None:
        if self.die_types is not None and die_type not in self.die_types:
            self.add(path, f"{die_type!r} is not in die_types ({', '.join(self.die_types) or 'none defined'})")

    def add(self, path: str, message: str) -> None:
        self.lines.append(f"{path}: {message}")

    def validate(self, model: type[Strict], value: object, path: str) -> Any:
        """`model` validated from `value`, or None with its errors added under `path`."""
        try:
            return model.model_validate(value)
        except ValidationError as err:
            self.lines.extend(validation_lines(err, prefix=path, suggest=_suggest))
            return None


def _link(p: _Problems, fields: dict[str, Any], ends: tuple[str, str], path: str,
          default_kind: str | None = None) -> dict[str, Any] | None:
    """A link entry from compact-form fields (all of Link's but `between`, which the form sets)."""
    if "between" in fields:
        p.add(f"{path}.between", "the compact form sets a link's ends; remove it")
        return None
    entry = {**({"kind": default_kind} if default_kind else {}), **fields, "between": list(ends)}
    link = p.validate(Link, entry, path)
    return None if link is None else entry


def _package_pairs(topology: str, count: int) -> list[tuple[int, int]]:
    if topology == "ring" and count > 2:
        return [(i, (i + 1) % count) for i in range(count)]
    if topology in ("ring", "chain"):
        return [(i, i + 1) for i in range(count - 1)]
    if topology == "all-pairs":
        return list(combinations(range(count), 2))
    return []


def _expand_package(p: _Problems, entry: dict[str, Any], path: str) -> tuple[list[dict], list[dict], dict] | None:
    """(dies, links, long-form package entry) of one compact package entry, or None if it is wrong."""
    if "dies" in entry:
        p.add(path, "give either dies (the long form) or count and die_type (the compact form), not both")
        return None
    form = p.validate(PackageForm, entry, path)
    if form is None:
        return None
    before = len(p.lines)
    p.check_type(form.die_type, f"{path}.die_type")
    if len(p.lines) > before:
        return None
    links = dict(form.links)
    topology = links.pop("topology", "ring")
    if topology not in PACKAGE_TOPOLOGIES:
        p.add(f"{path}.links.topology", f"{topology!r} is not a package topology; accepted: {', '.join(PACKAGE_TOPOLOGIES)}")
        return None
    names = [f"{form.name}.die{i}" for i in range(form.count)]
    dies = [{"name": n, "type": form.die_type} for n in names]
    made = []
    for i, j in _package_pairs(topology, form.count):
        link = _link(p, links, (names[i], names[j]), f"{path}.links", DEFAULT_PACKAGE_LINK)
        if link is None:
            return None
        made.append(link)
    package = {k: v for k, v in entry.items() if k not in ("count", "die_type", "links")}
    package["dies"] = names
    return dies, made, package


# A node name and where it comes from: (name, path of the field that makes it, how to say it).
Named = tuple[str, str, str]


def _expand_packages(p: _Problems, packages: list, path: str) -> tuple[list[dict], list[dict], list, list[Named]]:
    """Each compact entry of a packages list replaced, where it stands, by its long form:
    (new dies, new links, packages, the new dies' names)."""
    dies: list[dict] = []
    links: list[dict] = []
    out: list = []
    named: list[Named] = []
    for i, entry in enumerate(packages):
        made = _expand_package(p, entry, f"{path}[{i}]") if _is_compact_package(entry) else None
        if made is None:
            out.append(entry)  # the long form, or a wrong compact entry (its problems are recorded)
            continue
        dies += made[0]
        links += made[1]
        out.append(made[2])
        named += [(d["name"], f"{path}[{i}]", f"die {j} of package {entry.get('name')!r}")
                  for j, d in enumerate(made[0])]
    return dies, links, out, named


class _Board:
    """A validated board template, by local names."""

    def __init__(self, dies: list[dict], switches: list[str], links: list[dict], packages: list[dict]):
        self.dies, self.switches, self.links, self.packages = dies, switches, links, packages

    @property
    def nodes(self) -> list[str]:
        return [d["name"] for d in self.dies] + self.switches


def _board_template(p: _Problems, t: BoardTemplate, path: str) -> _Board | None:
    """The board with its compact packages expanded; its links and packages name only its own nodes."""
    before = len(p.lines)
    pkg_dies, pkg_links, packages, _ = _expand_packages(p, t.packages, f"{path}.packages")
    for i, entry in enumerate(packages):
        if not _is_compact_package(entry):  # long, or expanded from a compact entry (a wrong one stays compact)
            p.validate(Package, entry, f"{path}.packages[{i}]")
    for i, d in enumerate(t.dies):
        p.check_type(d.type, f"{path}.dies[{i}].type")
    dies = [{"name": d.name, "type": d.type} for d in t.dies] + pkg_dies
    board = _Board(dies, list(t.switches),
                   [lk.model_dump(mode="json", exclude_unset=True) for lk in t.links] + pkg_links, packages)
    if len(p.lines) > before:
        return None
    if not dies:
        p.add(path, "a board needs at least one die: list dies, or a package with count and die_type")
        return None
    seen: set[str] = set()
    for name in board.nodes:
        if name == HOST:
            p.add(f"{path}.dies", "'host' names the system's host; give the board's node another name")
        elif name in seen:
            p.add(f"{path}.dies", f"{name!r} names two nodes of the board (dies and switches); rename one")
        seen.add(name)
    for i, lk in enumerate(t.links):
        for end in lk.between:
            if end not in seen:
                hint = (" (the host is outside the board: write that link at the top level, e.g. between: "
                        "[host, b0.<die>])" if end == HOST else "")
                p.add(f"{path}.links[{i}].between", f"{end!r} is not a node of the board; its nodes are "
                      f"{', '.join(board.nodes)}{hint}")
    die_names = {d["name"] for d in dies}
    for i, entry in enumerate(packages):
        for d in entry.get("dies", []):
            if d not in die_names:
                p.add(f"{path}.packages[{i}].dies", f"{d!r} is not a die of the board ({', '.join(sorted(die_names))})")
    return None if len(p.lines) > before else board


def _uplink_from(p: _Problems, uplink: dict[str, Any], board: _Board, path: str) -> str | None:
    """The board node the uplink leaves from: `from`, or the board's only node."""
    nodes = board.nodes
    start = uplink.get("from")
    if start is None:
        if len(nodes) == 1:
            return nodes[0]
        p.add(f"{path}.from", f"missing; name the board node whose port goes to the switch (one of {', '.join(nodes)})")
        return None
    if not isinstance(start, str) or start not in nodes:
        p.add(f"{path}.from", f"{start!r} is not a node of the board; its nodes are {', '.join(nodes)}")
        return None
    return start


def _expand_group(p: _Problems, raw: object, path: str, dies_before: int) -> dict[str, list] | None:
    """The dies, switches, links, packages and node names of one `boards` group, or None if it is wrong."""
    group = p.validate(BoardGroup, raw, path)
    if group is None:
        return None
    board = _board_template(p, group.board, f"{path}.board")
    if board is None:
        return None
    uplink = {k: v for k, v in group.uplink.items() if k != "from"}
    start = _uplink_from(p, group.uplink, board, f"{path}.uplink")
    if start is None or _link(p, uplink, (start, group.switch), f"{path}.uplink") is None:
        return None
    total = dies_before + group.count * len(board.dies)
    if total > MAX_DIES:
        p.add(f"{path}.count", f"{group.count} boards of {len(board.dies)} dies make the system {total} dies; "
              f"a system holds at most {MAX_DIES}: lower the count")
        return None
    out: dict[str, list] = {"dies": [], "switches": [], "links": [], "packages": [], "names": []}
    for k in range(group.count):
        def local(name: str, k: int = k) -> str:
            return f"{group.prefix}{k}.{name}"

        for d in board.dies:
            out["dies"].append({"name": local(d["name"]), "type": d["type"]})
            out["names"].append((local(d["name"]), path, f"die {d['name']!r} of board {k} of {path}"))
        for s in board.switches:
            out["switches"].append(local(s))
            out["names"].append((local(s), path, f"switch {s!r} of board {k} of {path}"))
        for lk in board.links:
            out["links"].append({**lk, "between": [local(e) for e in lk["between"]]})
        out["links"].append({**uplink, "between": [local(start), group.switch]})
        for pkg in board.packages:
            out["packages"].append({**pkg, "name": local(str(pkg.get("name"))), "dies": [local(d) for d in pkg["dies"]]})
    return out


def _clashes(p: _Problems, named: list[Named]) -> None:
    """Every node name once: a clash names both places it comes from."""
    first: dict[str, str] = {}
    for name, path, what in named:
        if name in first:
            hint = " or change the boards' prefix" if path.startswith("boards") else ""
            p.add(path, f"{what} becomes {name!r}, which is already the name of {first[name]}; node names must be "
                        f"unique: rename one{hint}")
        else:
            first[name] = what


def expand_compact(data: dict[str, Any]) -> dict[str, Any]:
    """The system mapping with `boards` and compact packages replaced by their long form.

    Raises ValueError whose message is one `path: problem` line per problem (a leading newline
    tells the error formatter the lines carry their own paths)."""
    out = dict(data)
    types = out.get("die_types")
    p = _Problems([str(t) for t in types] if isinstance(types, dict) else None)
    lists = {key: out.get(key, []) for key in ("dies", "switches", "links", "packages")}
    ok = {key: isinstance(value, list) for key, value in lists.items()}  # a non-list is left for pydantic to report
    dies = list(lists["dies"]) if ok["dies"] else []
    switches = list(lists["switches"]) if ok["switches"] else []
    links = list(lists["links"]) if ok["links"] else []
    named: list[Named] = [(d["name"], f"dies[{i}]", f"dies[{i}]") for i, d in enumerate(dies)
                          if isinstance(d, dict) and isinstance(d.get("name"), str)]
    named += [(s, f"switches[{i}]", f"switches[{i}]") for i, s in enumerate(switches) if isinstance(s, str)]
    packages = lists["packages"]
    if ok["packages"]:
        pkg_dies, pkg_links, packages, pkg_named = _expand_packages(p, packages, "packages")
        named += pkg_named
        dies += pkg_dies
        links += pkg_links
    if "boards" in out:
        raw = out.pop("boards")
        groups = raw if isinstance(raw, list) else [raw]
        if not isinstance(raw, (list, dict)) or not groups:
            p.add("boards", "expected a mapping (count, prefix, board, uplink, switch) or a list of them")
        prefixes: dict[str, str] = {}
        for i, g in enumerate(groups if isinstance(raw, (list, dict)) else []):
            path = "boards" if isinstance(raw, dict) else f"boards[{i}]"
            made = _expand_group(p, g, path, len(dies))
            if made is None:
                continue
            prefix = g.get("prefix", "b") if isinstance(g, dict) else "b"
            if prefix in prefixes:
                p.add(f"{path}.prefix", f"{prefix!r} is also the prefix of {prefixes[prefix]}; give each group its own")
            prefixes[prefix] = path
            switch = g["switch"]
            if switch not in switches:
                switches.append(switch)
                named.append((switch, f"{path}.switch", f"the switch of {path}"))
            dies += made["dies"]
            switches += made["switches"]
            links += made["links"]
            if ok["packages"]:
                packages = [*packages, *made["packages"]]
            named += made["names"]
    if not p.lines:
        _clashes(p, named)
    if p.lines:
        raise ValueError("\n" + "\n".join(p.lines))
    for key, value in (("dies", dies), ("switches", switches), ("links", links), ("packages", packages)):
        if ok[key] and (value or key in out):
            out[key] = value
    return out
