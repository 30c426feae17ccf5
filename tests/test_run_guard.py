"""The faults of a long run: a second process on the same folder, SIGTERM, a diverging loss."""
import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.test_training import _weights, tiny_cfg
from tfawd.core.run_guard import Interrupted, ModelDirLock, NonFiniteError, RunError
from tfawd.lm.training import open_run, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD = ("import sys, time; from tfawd.core.run_guard import ModelDirLock; "
        "lock = ModelDirLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)")


def _holder(model_dir):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(model_dir)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_naming_the_first_and_sigkill_frees_the_folder(tmp_path):
    holder = _holder(tmp_path / "run")
    try:
        with pytest.raises(RunError, match=f"in use by process {holder.pid} .*another --model_dir"):
            ModelDirLock(str(tmp_path / "run")).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with ModelDirLock(str(tmp_path / "run")):  # the kernel dropped the dead holder's lock
        pass


def test_main_refuses_a_model_dir_in_use_within_seconds(tmp_path):
    """Refused before any data is read: --data_dir is an empty folder here (no download
    either: the lock comes first)."""
    holder = _holder(tmp_path / "run")
    no_data = tmp_path / "no_data"
    no_data.mkdir()
    try:
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "main.py", "--flagfile=configs/lstm_base_wt2_cpu.cfg",
                              f"--model_dir={tmp_path / 'run'}", f"--data_dir={no_data}",
                              "--max_steps=1"], cwd=REPO, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode != 0 and f"in use by process {holder.pid}" in out.stderr
        assert os.listdir(no_data) == []
        assert time.perf_counter() - start < 60
    finally:
        holder.kill()
        holder.wait()


def test_a_run_that_never_started_leaves_no_folder(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with ModelDirLock(str(tmp_path / "new")):
            1 / 0
    assert not (tmp_path / "new").exists()


def test_sigterm_saves_the_current_step_and_the_resumed_run_is_bit_exact(tiny_corpus, tmp_path):
    total = 30
    straight = open_run(tiny_cfg(tmp_path / "a", max_steps=total), tiny_corpus)
    straight.run()
    first = open_run(tiny_cfg(tmp_path / "b", max_steps=total), tiny_corpus)
    step, calls = first.task.train_step, []

    def terminated_at_the_7th_step(x, y):
        calls.append(1)
        if len(calls) == 7:
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would, mid-run
        return step(x, y)

    first.task.train_step = terminated_at_the_7th_step
    with pytest.raises(Interrupted, match="stopped by SIGTERM at step 7") as stopped:
        first.run()
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert first.manager.latest_checkpoint.endswith("ckpt-7")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again
    resumed = open_run(tiny_cfg(tmp_path / "b", max_steps=total), tiny_corpus)
    assert int(resumed.state.step) == 7
    resumed.run()
    for a, b in zip(_weights(straight), _weights(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_non_finite_loss_stops_the_run_and_saves_nothing_of_it(tiny_corpus, tmp_path):
    trainer = open_run(tiny_cfg(tmp_path / "run", max_steps=40, checkpoint_every=5), tiny_corpus)
    step, calls = trainer.task.train_step, []

    def nan_at_the_12th_step(x, y):
        calls.append(1)
        loss, norm = step(x, y)
        return (loss * np.nan, norm) if len(calls) == 12 else (loss, norm)

    trainer.task.train_step = nan_at_the_12th_step
    with pytest.raises(NonFiniteError, match="loss nan at step 12 .* checkpoint is .*ckpt-10"):
        trainer.run()
    assert trainer.manager.latest_checkpoint.endswith("ckpt-10")


def test_a_diverging_run_stops_with_one_line_naming_the_step(tiny_corpus, tmp_path):
    with pytest.raises(NonFiniteError) as error:
        train(tiny_cfg(tmp_path / "run", lr=1e30, clip=0.0, max_steps=200), tiny_corpus)
    message = str(error.value)
    assert "\n" not in message and "at step" in message and "--lr" in message
    for path in glob.glob(str(tmp_path / "run" / "*" / "ckpt-*.index")):  # nothing non-finite
        reader = tf.train.load_checkpoint(path[:-len(".index")])
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            if np.issubdtype(np.asarray(value).dtype, np.floating):
                assert np.all(np.isfinite(value)), name
