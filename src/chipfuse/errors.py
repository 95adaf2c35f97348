"""User-facing errors: each says what is wrong, where, and what would fix it."""


class ChipfuseError(Exception):
    """An error the CLI prints as one clear message, never as a traceback."""


class SpecError(ChipfuseError):
    """A hardware or model description is invalid."""


class FitError(ChipfuseError):
    """A model does not fit the system's memory."""


def _loc(loc: tuple) -> str:
    """A pydantic error location as a field path: host.dram.capacity_gib, links[0], tops.f16 (key)."""
    out = ""
    for part in loc:
        if part == "[key]":
            out += " (key)"
        elif isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _shown(value: object, limit: int = 80) -> str:
    """repr of a bad value, cut short: a stray megabyte string must not flood the message."""
    s = repr(value)
    return s if len(s) <= limit else s[:limit] + f"... ({len(s)} chars)"


def validation_lines(err, prefix: str = "", suggest=None) -> list[str]:
    """One line per problem in a pydantic ValidationError: field path, message, bad value.

    `prefix` is put before each path (for a document nested in another); `suggest(field)` may
    return a close known field name for an unknown one."""
    lines: list[str] = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith(("function-", "literal["))))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
            hint = suggest(str(loc[-1])) if (suggest and loc) else None
            if hint:
                msg += f"; did you mean {hint!r}?"
        got = e.get("input")
        quiet = e["type"] == "missing" or isinstance(got, (dict, list)) or "got " in msg
        shown = "" if quiet else f" (got {_shown(got)})"
        if msg.startswith("\n"):  # a nested document's own lines, already with their paths
            lines.extend(ln for ln in msg.splitlines() if ln)
            continue
        path = _loc(loc)
        if prefix:
            path = prefix + ("" if path == "(top level)" else ("" if path.startswith("[") else ".") + path)
        lines.append(f"{path}: {msg}{shown}")
    return lines


def format_validation_error(source: str, err, what: str, suggest=None) -> str:
    """`<source>: invalid <what> (n problem(s))`, then one indented line per problem."""
    lines = validation_lines(err, suggest=suggest)
    return "\n".join([f"{source}: invalid {what} ({len(lines)} problem(s))", *("  " + ln for ln in lines)])
