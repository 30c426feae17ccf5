"""The run's files on any filesystem, and writes that cannot leave half a file.

- Any TensorFlow filesystem (issue 28): a path with a scheme (`gs://`, `hdfs://`, `s3://`,
  `ram://`) goes through `tf.io.gfile`; a local path through `os` / `shutil` (no TensorFlow
  import, so the run-folder lock can be taken before it). `exists`, `isdir`, `makedirs`,
  `listdir`, `remove`, `rmtree`, `rename`, `copy`, `copytree`, `open_file` and `read_text`
  are the only doors to the filesystem of run folders, exports and results.
- Whole writes (issue 27): every file of a run folder is written to a temporary name beside
  it, flushed, then renamed over the old one, so a process killed in the middle (or a disk that
  fills up) leaves the previous version whole. On object stores (GCS, S3) an object becomes
  visible only when its upload completes, and the rename is a copy: the old version also
  survives a kill there.

A full disk gives `DiskFull` (a `RunError`: one line naming the file and the fix), and the
temporary file is removed.
"""
import contextlib
import errno
import json
import os
import shutil

from tfawd.core.run_guard import RunError


class DiskFull(RunError):
    """No space left (or quota exceeded) while writing a run's file."""


def _disk_full(path: str, e: OSError) -> DiskFull:
    return DiskFull(f"no space left on the device writing {path} ({e.strerror}); free space "
                    f"and re-run the same command (the previous version of the file is intact)")


# --- any filesystem ----------------------------------------------------------------------------

def is_remote(path) -> bool:
    """A path with a scheme (gs://, hdfs://, s3://, ram://): TensorFlow's filesystems."""
    return "://" in os.fspath(path)


def absolute(path) -> str:
    """An absolute form of `path`: a remote path as it is (it has no working folder)."""
    return path if is_remote(path) else os.path.abspath(path)


def _gfile():
    import tensorflow as tf  # only for remote paths: local ones never load TensorFlow here
    return tf.io.gfile


def exists(path) -> bool:
    return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path) -> bool:
    return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def makedirs(path) -> None:
    """The folder and its parents (nothing if it exists)."""
    if is_remote(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def listdir(path) -> list:
    """The names in a folder (no trailing slashes, whatever the filesystem)."""
    if is_remote(path):
        return [name.rstrip("/") for name in _gfile().listdir(path)]
    return os.listdir(path)


def remove(path) -> None:
    if is_remote(path):
        _gfile().remove(path)
    else:
        os.remove(path)


def rmtree(path) -> None:
    """A folder and all it holds; nothing if it is not there."""
    if is_remote(path):
        import tensorflow as tf
        try:
            if _gfile().exists(path):
                _gfile().rmtree(path)
        except tf.errors.NotFoundError:  # ram://: an entry listed twice (see copytree)
            if _gfile().exists(path):
                raise
    else:
        shutil.rmtree(path, ignore_errors=True)


def rename(src, dst) -> None:
    """`src` renamed to `dst`, replacing a file there (a folder: `dst` must not exist). A
    remote folder is copied, then removed: object stores have no folders to rename (a
    bucket's "rename" is a copy too), and neither has TensorFlow's ram:// filesystem."""
    if not (is_remote(src) or is_remote(dst)):
        os.replace(src, dst)
    elif isdir(src):
        copytree(src, dst)
        rmtree(src)
    else:
        _gfile().rename(src, dst, overwrite=True)


def copy(src, dst) -> None:
    if is_remote(src) or is_remote(dst):
        _gfile().copy(src, dst, overwrite=True)
    else:
        shutil.copy(src, dst)


def copytree(src, dst) -> None:
    """The files of folder `src` copied into `dst` (created), replacing those already there."""
    if not (is_remote(src) or is_remote(dst)):
        shutil.copytree(src, dst, dirs_exist_ok=True)
        return
    makedirs(dst)
    for name in listdir(src):
        path = os.path.join(src, name)
        if not exists(path):  # ram:// lists a sibling "assets.extra/x" under "assets" as ".extra"
            continue
        (copytree if isdir(path) else copy)(path, os.path.join(dst, name))


def open_file(path, mode: str = "r", encoding: str | None = "utf-8", errors=None):
    """`open` for any filesystem (text modes decode as `encoding`; UTF-8 on remote ones). A
    missing file to read raises FileNotFoundError there too (GFile would only fail later,
    with TensorFlow's NotFoundError, at the first read)."""
    if not is_remote(path):
        return open(path, mode, **({} if "b" in mode else {"encoding": encoding,
                                                           "errors": errors}))
    if "r" in mode and not exists(path):
        raise FileNotFoundError(path)
    return _gfile().GFile(path, mode.replace("t", ""))  # text modes: UTF-8


def read_text(path, errors: str | None = None) -> str:
    with open_file(path, "r", errors=errors) as f:
        return f.read()


# --- whole writes -----------------------------------------------------------------------------

@contextlib.contextmanager
def replaced(path: str, mode: str = "w", **kw):
    """Open a temporary file that replaces `path` when the block ends without an error."""
    tmp = f"{path}.tmp{os.getpid()}"
    if is_remote(path):
        try:
            with open_file(tmp, mode, **kw) as f:
                yield f
            rename(tmp, path)
        except BaseException:
            _remove(tmp)
            raise
        return
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
    with contextlib.suppress(Exception):  # OSError, or TensorFlow's NotFoundError
        remove(path)


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
    if exists(path):  # kept byte for byte, even where it is not UTF-8
        old = read_text(path, errors="surrogateescape")
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
        with open_file(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise RunError(f"{path} is missing{what and f' ({what})'}"
                       f"{fix and f'; {fix}'}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise RunError(f"{path} is damaged (not valid JSON: {str(e).splitlines()[0][:80]})"
                       f"{fix and f'; {fix}'}") from None
