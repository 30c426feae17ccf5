"""Damaged run folders through the command line (issue 27): `python main.py` on a damaged file
ends with a non-zero exit and one line of its own on stderr naming the file (the damage
matrices call the modes in-process; this checks what a user sees: no traceback from main.py's
own steps either, such as adopting the run's recorded flags), or goes on by a documented
fallback. A damaged export folder is refused the same way."""
import os
import shutil

import pytest

from tests.conftest import make_tiny_corpus
from tests.test_damage_matrix import _damage, _resolve
from tests.test_export_dir import NOT_FOLDERS, not_a_folder
from tests.test_main_flags import our_stderr_lines, run_main
from tests.test_training import tiny_cfg
from tfawd.lm.training import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_damage")
    train(tiny_cfg(root / "run", max_steps=6, checkpoint_every=3), make_tiny_corpus())
    train(tiny_cfg(root / "other", max_steps=3, emsize=24, nhid=24),
          make_tiny_corpus(seed=1, vocab_size=40))
    return root


GENERATE = ("--mode=generate", "--prompt=w1 w2", "--num_tokens=3")
CELLS = [  # (file, damage, mode's arguments); none of them reads the corpus
    ("results.json", "garbage", GENERATE),  # the recorded flags main.py adopts first
    ("model.json", "garbage", ("--mode=evaluate",)),
    ("model.json", "swap", ("--mode=export",)),
    ("vocab.txt", "truncate", GENERATE),
    ("best/DATA", "truncate", GENERATE),
    ("best/INDEX", "truncate", ("--mode=predict",)),
]


@pytest.mark.parametrize("name,damage,args", CELLS,
                         ids=[f"{n}-{d}-{a[0][7:]}" for n, d, a in CELLS])
def test_main_names_the_damaged_file_in_one_line(trained, tmp_path, name, damage, args):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    path = _resolve(str(run), name)
    _damage(path, damage, _resolve(str(trained / "other"), name))
    np_ctx = tmp_path / "ctx.npy"
    if "--mode=predict" in args:
        import numpy as np
        np.save(np_ctx, np.array([[1, 2, 3]], np.int32))
        args = (*args, f"--contexts={np_ctx}", f"--output={tmp_path / 'scores.npy'}")
    if "--mode=generate" in args:
        args = (*args, f"--output={tmp_path / 'gen.txt'}")
    proc = run_main(f"--model_dir={run}", f"--export_dir={tmp_path / 'export'}", *args)
    ours = our_stderr_lines(proc.stderr)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(ours) == 1 and ours[0].startswith("error: "), ours
    assert os.path.basename(path) in ours[0] or os.path.dirname(path) in ours[0], ours[0]


def test_best_weights_gone_fall_back_to_the_latest_in_one_warning(trained, tmp_path):
    """The documented fallback at the command line: with best/'s files deleted, generate uses
    the latest training weights and says so in one line naming best/ (never silently)."""
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    for name in ("best/INDEX", "best/DATA"):
        _damage(_resolve(str(run), name), "delete", None)
    proc = run_main(f"--model_dir={run}", *GENERATE, f"--output={tmp_path / 'gen.txt'}")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "gen.txt").read_text().strip()
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and str(run / "best") in warnings[0], proc.stdout


@pytest.mark.parametrize("damage", NOT_FOLDERS)
def test_export_into_a_damaged_export_folder_is_refused_in_one_line(trained, tmp_path, damage):
    export_dir = tmp_path / "export"
    named = not_a_folder(export_dir, damage, "served")
    proc = run_main(f"--model_dir={trained / 'run'}", "--mode=export",
                    f"--export_dir={export_dir}", "--export_name=served")
    ours = our_stderr_lines(proc.stderr)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert len(ours) == 1 and str(named) in ours[0], ours
