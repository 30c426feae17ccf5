"""The damage matrix (issue 27): every file of a small trained language-model run folder, each
damaged in four ways (truncated, garbage bytes, deleted, swapped for another run's copy), then
each mode run on it (train, evaluate, predict, generate; the tune modes on every file damaged
two ways; export on the files it reads). Every cell must either work (a documented fallback:
a log file rebuilt, a record started anew) or stop with a user error of one line that names
the damaged file; never another exception (a traceback), and never a change to the folder's
other files.

The modes are called in-process as main.py calls them, with main.py's error contract: the
user errors it turns into one line (`RunError`, `DataError`; `ValueError` for predict,
generate and export).
"""
import dataclasses
import hashlib
import os
import shutil

import numpy as np
import pytest

from pipelines.corpus_files import DataError
from tests.conftest import make_tiny_corpus
from tests.test_training import tiny_cfg
from tfawd.core.run_guard import RunError
from tfawd.lm import export, modes
from tfawd.lm.config import InferenceConfig
from tfawd.lm.training import train

FILES = ("model.json", "flags.json", "vocab.txt", "results.json", "history.json",
         "segments.json", "commands.txt", "eval_results.json", "ckpt/checkpoint",
         "ckpt/DATA", "best/DATA", "best/INDEX")
DAMAGES = ("truncate", "garbage", "delete", "swap")
MODES = ("train", "evaluate", "predict", "generate")
TUNE_MODES = ("tune_cache", "tune_dynamic_eval")  # the readers of evaluate, another writer


def _cfg(run, **kw):
    return tiny_cfg(run, **{"max_steps": 12, "checkpoint_every": 5, **kw})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A trained run, and another run (other vocabulary and sizes) to swap files from."""
    root = tmp_path_factory.mktemp("damage")
    corpus = make_tiny_corpus()
    train(_cfg(root / "run"), corpus)
    modes.evaluate(_cfg(root / "run"), corpus)  # eval_results.json
    other_corpus = make_tiny_corpus(seed=1, vocab_size=40)
    train(_cfg(root / "other", emsize=24, nhid=24), other_corpus)
    modes.evaluate(_cfg(root / "other", emsize=24, nhid=24), other_corpus)
    return root, corpus


def _resolve(run, name):
    """ckpt/DATA: the newest data file of ckpt/ (best/INDEX: best's index file)."""
    folder, _, leaf = name.partition("/")
    if leaf in ("DATA", "INDEX"):
        suffix = ".data-00000-of-00001" if leaf == "DATA" else ".index"
        found = sorted((f for f in os.listdir(os.path.join(run, folder)) if f.endswith(suffix)),
                       key=lambda f: int(f.split("-")[1].split(".")[0]))
        return os.path.join(run, folder, found[-1])
    return os.path.join(run, name)


def _damage(path, damage, other):
    if damage == "truncate":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif damage == "garbage":
        rng = np.random.default_rng(0)
        with open(path, "wb") as f:
            f.write(rng.integers(0, 256, max(64, os.path.getsize(path)), np.uint8).tobytes())
    elif damage == "delete":
        os.remove(path)
    else:
        shutil.copy(other, path)


def _digests(run):
    out = {}
    for base, _, names in os.walk(run):
        for n in names:
            p = os.path.join(base, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, run)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _call(mode, run, corpus, tmp_path):
    cfg = _cfg(run, max_steps=14)
    inf = InferenceConfig(prompt="w1 w2", num_tokens=3, contexts="", output="")
    if mode == "train":
        return train(cfg, corpus)
    if mode == "evaluate":
        return modes.evaluate(cfg, corpus)
    if mode in ("tune_cache", "tune_dynamic_eval"):  # grids of two points, a short cache
        cfg = dataclasses.replace(cfg, cache_window=20, cache_thetas="0.5", cache_lambdas="0.1,0.2",
                                  dynamic_eval_lrs="1e-3", dynamic_eval_lambdas="0.002,0.02",
                                  dynamic_eval_tune_tokens=100)
        return getattr(modes, mode)(cfg, corpus)
    if mode == "predict":
        np.save(tmp_path / "ctx.npy", np.array([[1, 2, 3]], np.int32))
        inf.contexts = str(tmp_path / "ctx.npy")
        inf.output = str(tmp_path / "scores.npy")
        return modes.predict(cfg, inf)
    if mode == "generate":
        inf.output = str(tmp_path / "gen.txt")
        return modes.generate(cfg, inf)
    return export.export_run(dataclasses.replace(cfg, export_dir=str(tmp_path / "export")))


def check_damage(root, tmp_path, name, damage, mode, call):
    """Copies `root/run`, damages its file `name` (`damage`; "swap" takes `root/other`'s copy),
    runs `call(run)` and asserts the contract of the module doc: it works, or it stops with one
    line naming the file and changes no other file of the folder (TensorBoard logs aside)."""
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    path = _resolve(str(run), name)
    _damage(path, damage, _resolve(str(root / "other"), name))
    before = {k: v for k, v in _digests(run).items() if k != os.path.relpath(path, run)}
    try:
        call(run)
        return  # a documented fallback
    except (RunError, DataError, ValueError) as e:
        message = str(e)
    assert "\n" not in message, message
    assert os.path.basename(path) in message or os.path.dirname(path) in message, \
        f"{name} ({damage}) in {mode}: {message}"
    after = _digests(run)
    changed = [k for k, v in before.items() if after.get(k) != v and not k.startswith("tb")]
    assert not changed, f"{name} ({damage}) in {mode} changed {changed}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("name", FILES)
def test_a_damaged_file_gives_one_line_naming_it_or_a_documented_fallback(
        runs, tmp_path, name, damage, mode):
    root, corpus = runs
    check_damage(root, tmp_path, name, damage, mode,
                 lambda run: _call(mode, run, corpus, tmp_path))


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("name", ("model.json", "vocab.txt", "best/DATA", "flags.json"))
def test_export_of_a_damaged_run_gives_one_line_naming_the_file(runs, tmp_path, name, damage):
    test_a_damaged_file_gives_one_line_naming_it_or_a_documented_fallback(
        runs, tmp_path, name, damage, "export")


@pytest.mark.parametrize("mode", TUNE_MODES)
@pytest.mark.parametrize("damage", ("garbage", "swap"))  # truncate and delete read alike
@pytest.mark.parametrize("name", FILES)
def test_the_tune_modes_on_a_damaged_file_give_one_line_or_a_documented_fallback(
        runs, tmp_path, name, damage, mode):
    test_a_damaged_file_gives_one_line_naming_it_or_a_documented_fallback(
        runs, tmp_path, name, damage, mode)
