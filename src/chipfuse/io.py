"""Safe file I/O for user files: bounded reads with clear errors, atomic writes, early write checks.

Every failure is a ChipfuseError (or the subclass the caller asks for) that names the file and
what to do, so the CLI never shows a traceback for a missing folder or a stray binary file.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import ChipfuseError

KiB = 1024
MiB = 1024 * KiB


def _fmt_size_bytes(n: int) -> str:
    """A byte count for messages: 1.5 MiB, 20 KiB, 12 bytes."""
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    if n >= KiB:
        return f"{n / KiB:.0f} KiB"
    return f"{n} bytes"


def _stat_for_read(p: Path, what: str, error: type[ChipfuseError]) -> os.stat_result:
    """stat() a file about to be read, turning every way it can be absent into one message."""
    try:
        st = p.stat()
    except FileNotFoundError:
        raise error(f"{p}: no such {what}") from None
    except PermissionError:
        raise error(f"{p}: cannot read the {what}: permission denied (check the folder's permissions)") from None
    except OSError as err:
        raise error(f"{p}: cannot read the {what}: {err.strerror or err}") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{p}: is a directory, not a {what}; give the path of the file inside it")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{p}: is not a regular file (a pipe or a device); give the path of a {what}")
    return st


def read_text_bounded(path: str | Path, what: str, max_bytes: int, *,
                      error: type[ChipfuseError] = ChipfuseError) -> str:
    """The UTF-8 text of a user file of at most `max_bytes`, or one clear error naming the file.

    `what` names the file in messages ("system file", "plan file"). Size is checked before reading
    and again while reading (a file can grow), so a huge or endless file never fills memory."""
    p = Path(path)
    st = _stat_for_read(p, what, error)
    too_big = f"{p}: too large for a {what} ({{size}}; the limit is {_fmt_size_bytes(max_bytes)}); is this the right file?"
    if st.st_size > max_bytes:
        raise error(too_big.format(size=_fmt_size_bytes(st.st_size)))
    try:
        with p.open("rb") as fh:
            raw = fh.read(max_bytes + 1)
    except PermissionError:
        raise error(f"{p}: cannot read the {what}: permission denied (chmod u+r {p})") from None
    except OSError as err:
        raise error(f"{p}: cannot read the {what}: {err.strerror or err}") from None
    if len(raw) > max_bytes:
        raise error(too_big.format(size=f"over {_fmt_size_bytes(max_bytes)}"))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{p}: not UTF-8 text: byte 0x{raw[err.start]:02x} at offset {err.start} cannot be decoded; "
                    f"a {what} is plain UTF-8 text (is this a binary file, or saved in another encoding?)") from None


def check_writable(path: str | Path) -> None:
    """Raise a ChipfuseError now if `path` cannot be written later: call before long work starts."""
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise ChipfuseError(f"{p}: is a directory; give a file name to write")
    if not folder.is_dir():
        raise ChipfuseError(f"{p}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ChipfuseError(f"{p}: folder {folder} is not writable; choose another place")
    if p.exists() and not os.access(p, os.W_OK):
        raise ChipfuseError(f"{p}: the file exists and is not writable; choose another name or chmod u+w it")


def _new_file_mode() -> int:
    """The permission bits a plain open() would give a new file (0o666 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(temp_path)` on a temporary file beside `path`, then rename it over `path`: a reader sees the
    old file or the new one, never half of one (a killed run leaves no partial file under the real name)."""
    p = Path(path)
    check_writable(p)
    mode = stat.S_IMODE(p.stat().st_mode) if p.exists() else _new_file_mode()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        os.close(fd)
    except OSError as err:
        raise ChipfuseError(f"{p}: cannot write in folder {p.parent}: {err.strerror or err}") from None
    try:
        write(Path(tmp))
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise ChipfuseError(f"{p}: cannot write: {err.strerror or err}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically (synced before the rename)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    write_atomic(path, write)


def replace_marked_block(path: str | Path, tag: str, body: str) -> None:
    """Put `body` between `<!-- tag:start -->` and `<!-- tag:end -->` in a text file (appended with the markers
    if they are not there yet; the file is created if missing), written atomically."""
    p = Path(path)
    start, end = f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"
    text = read_text_bounded(p, "Markdown file", 16 * MiB) if p.exists() else ""
    block = f"{start}\n{body}\n{end}"
    if start in text and end in text and text.index(start) < text.index(end):
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = (text.rstrip() + "\n\n" if text else "") + block + "\n"
    write_text_atomic(p, text)
