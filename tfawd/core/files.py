"""Writes that cannot leave half a file (issue 27): every file of a run folder is written to a
temporary name beside it, flushed to disk, then renamed over the old one, so a process killed
in the middle (or a disk that fills up) leaves the previous version whole.

A full disk gives `DiskFull` (a `RunError`: one line naming the file and the fix), and the
temporary file is removed.
"""
import contextlib
import errno
import json
import os

from tfawd.core.run_guard import RunError


class DiskFull(RunError):
    """No space left (or quota exceeded) while writing a run's file."""


def _disk_full(path: str, e: OSError) -> DiskFull:
    return DiskFull(f"no space left on the device writing {path} ({e.strerror}); free space "
                    f"and re-run the same command (the previous version of the file is intact)")


@contextlib.contextmanager
def replaced(path: str, mode: str = "w", **kw):
    """Open a temporary file that replaces `path` when the block ends without an error."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode, **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(path, e) from None
        raise
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


def write_text(path: str, text: str) -> None:
    with replaced(path, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(text)


def write_json(path: str, payload) -> None:
    with replaced(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=False)
        f.write("\n")


def append_line(path: str, line: str) -> None:
    """The file with one more line, replaced whole (never a half-written last line)."""
    old = ""
    if os.path.exists(path):  # kept byte for byte, even where it is not UTF-8
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            old = f.read()
        if old and not old.endswith("\n"):
            old += "\n"
    write_text(path, old + line.rstrip("\n") + "\n")


def save_figure(fig, path: str, **kw) -> None:
    """matplotlib's `fig.savefig`, replaced whole."""
    fmt = os.path.splitext(path)[1].lstrip(".") or "png"
    with replaced(path, "wb") as f:
        fig.savefig(f, format=fmt, **kw)


def save_npy(path: str, array) -> None:
    import numpy as np
    with replaced(path, "wb") as f:
        np.save(f, array)


def read_json(path: str, what: str = "", fix: str = ""):
    """JSON of a run's file, or one line naming the file, what is wrong and the fix."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise RunError(f"{path} is missing{what and f' ({what})'}"
                       f"{fix and f'; {fix}'}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise RunError(f"{path} is damaged (not valid JSON: {str(e).splitlines()[0][:80]})"
                       f"{fix and f'; {fix}'}") from None
