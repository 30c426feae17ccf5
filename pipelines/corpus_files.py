"""Locating, verifying and (when online) downloading the language-modelling corpora.

A corpus is three token files (train/valid/test) under `<data_dir>/<folder>/`, laid out like
../shared/data. Files found locally are checked against their published sha256; missing files
are fetched from the official archive, extracted and checked the same way. Offline, the fetch
fails within seconds with a message that names `--data_dir` (never a minutes-long retry loop).

The data folder may be on any TensorFlow filesystem (`gs://`, `hdfs://`, `s3://`, `ram://`;
issue 28): every reader of `pipelines/` opens its files with `open_data` and lists them with
`tf.io.gfile`, which serves local paths as well.
"""
import dataclasses
import errno
import hashlib
import io
import os
import pathlib
import socket
import tarfile
import threading
import urllib.parse
import urllib.request
import zipfile

DATA_DIR_ENV = "TFAWD_DATA_DIR"
CACHE_DIR_ENV = "TFAWD_CACHE_DIR"
SPLITS = ("train", "valid", "test")


class DataError(RuntimeError):
    """Raised for missing, unreachable or corrupted data, with a message naming the fix."""


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """Where a corpus lives in a data folder, where it comes from, and what its files hash to."""
    name: str
    folder: str
    files: dict  # split -> file name inside `folder`
    sha256: dict  # split -> expected sha256 of that file
    url: str  # official archive
    members: dict  # split -> member path inside the archive


CORPORA = {
    "wikitext2": CorpusSpec(
        name="wikitext2",
        folder="wikitext-2",
        files={s: f"wiki.{s}.tokens" for s in SPLITS},
        sha256={
            "train": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
            "valid": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
            "test": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
        },
        url="https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip",
        members={s: f"wikitext-2/wiki.{s}.tokens" for s in SPLITS},
    ),
    "ptb": CorpusSpec(
        name="ptb",
        folder="penn",
        files={s: f"{s}.txt" for s in SPLITS},
        sha256={
            "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
            "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
            "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
        },
        url="http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz",
        members={s: f"./simple-examples/data/ptb.{s}.txt" for s in SPLITS},
    ),
}


def default_cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get(CACHE_DIR_ENV) or pathlib.Path.home() / ".cache" / "tfawd")


def default_data_dir() -> str:
    """`$TFAWD_DATA_DIR` if set, else the download cache."""
    return os.environ.get(DATA_DIR_ENV) or str(default_cache_dir() / "data")


def is_remote(path) -> bool:
    """A path with a scheme (gs://, hdfs://, s3://, ram://): TensorFlow's filesystems."""
    return "://" in os.fspath(path)


def gfile():
    """`tf.io.gfile`, imported on first use (flag parsing imports this module)."""
    import tensorflow as tf
    return tf.io.gfile


def open_data(path, mode: str = "r"):
    """A data file opened for reading on any filesystem, read as `open(path, mode,
    encoding="utf-8")` reads a local one: text decoded as UTF-8 with universal newlines
    (token files keep their exact lines), bytes as they are; a missing file raises
    FileNotFoundError, as `open` does, wherever it lives."""
    if mode not in ("r", "rb"):
        raise ValueError(f"open_data reads ('r' or 'rb'), not {mode!r}")
    if not is_remote(path):
        return open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
    if not gfile().exists(path):
        raise FileNotFoundError(errno.ENOENT, "No such file", str(path))
    with gfile().GFile(path, "rb") as f:
        payload = io.BytesIO(f.read())
    return payload if "b" in mode else io.TextIOWrapper(payload, encoding="utf-8")


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open_data(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path, expected: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise DataError(
            f"{path} is corrupted or not the official file: sha256 {actual}, expected {expected}. "
            f"Delete it to re-download, or point --data_dir (or ${DATA_DIR_ENV}) at a good copy.")


def reachable(url: str, timeout_s: float = 3.0) -> bool:
    """True if a TCP connection to the URL's host opens within `timeout_s` (DNS included)."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    ok = []

    def probe():
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout_s + 0.5)
    return bool(ok)


def _download_and_extract(spec: CorpusSpec, target: str, timeout_s: float) -> None:
    if not reachable(spec.url, timeout_s):
        raise DataError(
            f"{spec.name} files are not in {target} and {spec.url} cannot be reached (offline?). "
            f"Pass --data_dir (or set ${DATA_DIR_ENV}) to a folder holding "
            f"{spec.folder}/{{{','.join(spec.files.values())}}}.")
    with urllib.request.urlopen(spec.url, timeout=60) as r:
        payload = io.BytesIO(r.read())
    gfile().makedirs(target)
    with (zipfile.ZipFile(payload) if spec.url.endswith(".zip") else
          tarfile.open(fileobj=payload)) as archive:
        for split, member in spec.members.items():
            data = (archive.read(member) if isinstance(archive, zipfile.ZipFile) else
                    archive.extractfile(member).read())
            with gfile().GFile(os.path.join(target, spec.files[split]), "wb") as f:
                f.write(data)


def corpus_files(name: str, data_dir: str | None = None, timeout_s: float = 3.0) -> dict:
    """Returns {split: path} of the verified token files of corpus `name`.

    Looks in `<data_dir>/<folder>/`; downloads what is missing; refuses a file whose sha256
    differs from the published one (the message shows both hashes).
    """
    if name not in CORPORA:
        raise DataError(f"unknown dataset {name!r}; choose one of {sorted(CORPORA)} (--dataset)")
    spec = CORPORA[name]
    folder = os.path.join(data_dir or default_data_dir(), spec.folder)
    paths = {s: os.path.join(folder, f) for s, f in spec.files.items()}
    if not all(gfile().exists(p) and not gfile().isdir(p) for p in paths.values()):
        _download_and_extract(spec, folder, timeout_s)
    for split, path in paths.items():
        verify(path, spec.sha256[split])
    return paths
