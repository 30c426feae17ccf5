"""Distributed training (tfawd/core/distribute.py): runs over several replicas or worker
processes equal a single-process run of the same global batch and seed; only the chief
writes the run folder; a lost worker ends the others with a clear error, and restarting
resumes from the last checkpoint.

Each run is a process of tests/distributed_run.py (logical CPUs and multi-worker strategies
must be set up before TensorFlow starts). Tolerance of the equality: 1e-5 absolute on every
checkpointed float. The replicas sum float32 gradients of half batches where one process
sums the whole batch, so the runs differ by float32 rounding only (measured: <= 1e-7 after
20 steps, with every AWD-LSTM dropout on); one training step moves the weights by ~1e-2.
"""
import json
import os
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO
from tfawd.core import distribute
from tfawd.core.clock import clock
from tfawd.core.run_guard import RunError
from tfawd.launch import free_ports, tf_config

TOLERANCE = 1e-5


def run(*args, env=None, timeout=600):
    """tests/distributed_run.py (or the launcher with `--workers`): (returncode, output)."""
    if args and args[0] == "launch":
        argv = [sys.executable, "-m", "tfawd.launch", *args[1:]]
    else:
        argv = [sys.executable, "tests/distributed_run.py", *args]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    return proc.returncode, proc.stdout + proc.stderr


def checkpoint(model_dir) -> dict:
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(model_dir, "ckpt")))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if "OBJECT_GRAPH" not in k}


def assert_same_checkpoint(a_dir, b_dir):
    a, b = checkpoint(a_dir), checkpoint(b_dir)
    assert set(a) == set(b)
    floats = 0
    for name in a:
        if "train_seconds" in name:  # a clock
            continue
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.dtype.kind == "f" and np.isfinite(x).all():
            np.testing.assert_allclose(x, y, rtol=0, atol=TOLERANCE, err_msg=name)
            floats += x.size
        else:  # counters, RNG states, best score (inf before the first validation)
            np.testing.assert_array_equal(x, y, err_msg=name)
    assert floats > 1000  # the weights, slots and carried state were compared


@pytest.fixture(scope="module")
def single_lm(tmp_path_factory):
    """The reference: one process, AWD-LSTM with every dropout on, 20 steps."""
    d = tmp_path_factory.mktemp("single_lm")
    code, out = run("--family=lm", f"--model_dir={d}", "--dropout=0.2")
    assert code == 0, out
    return d


def test_two_mirrored_replicas_equal_one_process(single_lm, tmp_path):
    """MirroredStrategy over 2 logical CPUs; every dropout on: the masks are the global
    batch's, sliced per replica, so the runs drop the same units."""
    code, out = run("--family=lm", "--distribute=mirrored", "--cpu_replicas=2",
                    f"--model_dir={tmp_path}", "--dropout=0.2")
    assert code == 0, out
    assert_same_checkpoint(single_lm, tmp_path)
    results = json.load(open(tmp_path / "results.json"))
    assert results["distribute"] == {"kind": "mirrored", "workers": 1, "replicas": 2}
    single = json.load(open(single_lm / "results.json"))
    assert results["val_ppl"] == pytest.approx(single["val_ppl"], rel=1e-6)


def test_two_workers_equal_one_process_and_only_the_chief_writes(single_lm, tmp_path):
    d, scratch = tmp_path / "run", tmp_path / "tmp"
    scratch.mkdir()
    code, out = run("launch", "--workers=2", "--script=tests/distributed_run.py", "--",
                    "--family=lm", f"--model_dir={d}", "--dropout=0.2",
                    env={"TMPDIR": str(scratch)})
    assert code == 0, out
    assert_same_checkpoint(single_lm, d)
    assert '[w1] RESULT {"worker": 1' in out and "[w0] | final" in out
    assert os.listdir(scratch) == []  # worker 1's scratch copy is gone
    assert json.load(open(d / "results.json"))["distribute"]["workers"] == 2
    commands = open(d / "commands.txt").read().strip().splitlines()
    assert len(commands) == 1  # the chief's; worker 1 wrote nothing here


def test_speech_two_workers_equal_one_process(data_dir, tmp_path):
    """With the guided attention loss on: each replica weighs its losses by its share of
    the batch's characters and attention cells. Teacher forcing stays 1: below 1 the decoder
    feeds back its argmax, a discrete choice that float32 rounding can flip (seen: 8 of 744
    Adam moments 1e-5 apart after 6 steps at 0.8)."""
    single, multi = tmp_path / "single", tmp_path / "multi"
    code, out = run("--family=speech", f"--data_dir={data_dir}", f"--model_dir={single}",
                    "--max_steps=6")
    assert code == 0, out
    code, out = run("launch", "--workers=2", "--script=tests/distributed_run.py", "--",
                    "--family=speech", f"--data_dir={data_dir}", f"--model_dir={multi}",
                    "--max_steps=6")
    assert code == 0, out
    assert_same_checkpoint(single, multi)


def test_a_lost_worker_ends_the_other_and_both_resume(tmp_path):
    d = tmp_path / "run"
    ports = free_ports(2)
    argv = [sys.executable, "tests/distributed_run.py", "--family=lm", f"--model_dir={d}",
            "--max_steps=100000", "--checkpoint_every=5", "--distribute=multi_worker",
            "--collective_timeout_s=20"]
    logs = [open(tmp_path / f"w{i}.log", "w+") for i in range(2)]
    procs = [subprocess.Popen(argv, cwd=REPO, stdout=logs[i], stderr=subprocess.STDOUT,
                              env={**os.environ, "TF_CONFIG": tf_config(ports, i)})
             for i in range(2)]
    try:
        deadline = time.monotonic() + 300
        while not os.path.exists(d / "ckpt" / "checkpoint"):
            assert time.monotonic() < deadline and procs[0].poll() is None, "no checkpoint"
            time.sleep(0.5)
        procs[1].kill()
        killed = time.monotonic()
        code = procs[0].wait(timeout=180)  # collectives would wait forever without a bound
        waited = time.monotonic() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    logs[0].seek(0)
    out = logs[0].read()
    assert code == 1 and "lost the other workers" in out, out[-3000:]
    assert waited < 180
    saved = int(tf.train.latest_checkpoint(str(d / "ckpt")).rsplit("-", 1)[1])
    code, out = run("launch", "--workers=2", "--script=tests/distributed_run.py", "--",
                    "--family=lm", f"--model_dir={d}", f"--max_steps={saved + 5}")
    assert code == 0, out
    assert out.count(f"Resumed from {d}/ckpt/ckpt-{saved}") == 1  # the chief, from D
    assert out.count(f"/ckpt/ckpt-{saved}") == 2  # worker 1: from its copy of it
    assert json.load(open(d / "results.json"))["steps"] == saved + 5


# -- the pieces, in this process -------------------------------------------------------

@pytest.mark.parametrize("config, message", [
    ("", "--distribute=multi_worker needs TF_CONFIG"),
    ("{not json", "TF_CONFIG is not valid"),
    ('{"cluster": {"worker": ["a:1"]}}', "TF_CONFIG is not valid"),
    ('{"cluster": {"worker": ["a:1"], "chief": ["b:2"]}, "task": {"type": "chief", '
     '"index": 0}}', 'only "worker" tasks are supported'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
     "task index 2 is not one of the 2 workers"),
])
def test_bad_tf_config_is_refused_with_the_fix(config, message):
    with pytest.raises(RunError, match=message) as e:
        distribute.cluster_position(config)
    assert "BUILD.md" in str(e.value) and "tfawd.launch" in str(e.value)


def test_cluster_position_reads_the_worker_index():
    assert distribute.cluster_position(tf_config([1, 2, 3], 2)) == (2, 3)


def test_the_global_batch_must_split_over_the_replicas():
    dist = distribute.Distribution(types.SimpleNamespace(num_replicas_in_sync=3), "mirrored")
    dist.check_batch(12)
    with pytest.raises(RunError, match=r"--batch_size=8 does not split over 3 replicas.*"
                                       r"multiple of 3"):
        dist.check_batch(8)


def test_other_workers_train_in_a_scratch_copy_of_the_resume_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    d = tmp_path / "run"
    (d / "ckpt").mkdir(parents=True)
    (d / "best").mkdir()
    for name in ("ckpt/checkpoint", "ckpt/ckpt-5.index", "history.json", "flags.json",
                 "vocab.txt", "model.json", "results.json", "best/checkpoint"):
        (d / name).write_text(name)
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    chief = distribute.Distribution(None, "multi_worker", 0, 2)
    with chief.run_folder(str(d)) as folder:
        assert folder == str(d)
    worker = distribute.Distribution(None, "multi_worker", 1, 2)
    with worker.run_folder(str(d)) as folder:
        assert folder.startswith(str(tmp_path / "tmp"))
        copied = sorted(os.path.relpath(os.path.join(r, f), folder)
                        for r, _, fs in os.walk(folder) for f in fs)
        assert copied == ["ckpt/checkpoint", "ckpt/ckpt-5.index", "flags.json",
                          "history.json", "model.json", "vocab.txt"]
    assert not os.path.exists(folder) and os.listdir(tmp_path / "tmp") == []


def test_replica_helpers_are_the_identity_in_one_process():
    x = tf.reshape(tf.range(12.0), [6, 2])
    assert distribute.replica_position() == (0, 1)
    assert distribute.this_replica_rows(x) is x
    assert distribute.gather_rows(x) is x
    assert distribute.all_reduce_sum([x]) == [x]
    drawn = distribute.replica_rows_of(lambda n: tf.ones([n, 3]), 4)
    assert drawn.shape == (4, 3)
    local = distribute.local()
    assert local.replicas == 1 and local.is_chief and local.agree(2.5) == 2.5


def test_workers_take_the_same_stop_and_budget_decisions():
    """A worker whose clock or signal says stop stops them all at the same step; the time
    left is the slowest clock's (`Loop._agreed_stop`, `Loop.minutes_left`)."""

    from tfawd.core.loop import Loop, LoopConfig, RunState

    class TwoWorkers:  # this worker and another, whose value is `other`
        num_workers, other = 2, 0.0

        def agree(self, value, op):
            return {"max": max, "min": min}[op](value, self.other)

    loop = Loop.__new__(Loop)  # the loop's decisions only, no task
    loop.settings = LoopConfig("unused", max_epochs=1, time_budget_min=60)
    loop.state, loop.distribution = RunState(), TwoWorkers()
    calm, start = types.SimpleNamespace(received=False), clock().now()
    for other, expected in ((0, None), (1, "time_budget"), (2, "signal")):
        loop.distribution.other = other
        assert loop._agreed_stop(calm, start) == expected
    loop.distribution.other = 0
    assert loop._agreed_stop(types.SimpleNamespace(received=True), start) == "signal"
    loop.distribution.other = 3.0
    assert loop.minutes_left() == 3.0  # the other worker's budget is nearly spent
    loop.distribution = None
    assert loop.minutes_left() == 60


@pytest.mark.parametrize("worker, mine, chief, given, expected", [
    (1, "float32", "mixed_bfloat16", "auto", "mixed_bfloat16"),  # an AVX2 worker, bf16 chief
    (1, "mixed_bfloat16", "float32", None, "float32"),
    (0, "mixed_bfloat16", "float32", "auto", "mixed_bfloat16"),  # the chief keeps its own
    (1, "float32", "mixed_bfloat16", "float32", "float32"),      # explicit: the same flag
])
def test_auto_precision_is_the_chiefs_on_every_worker(worker, mine, chief, given, expected):
    """`--precision=auto` resolved per machine would train a mixed cluster in two precisions:
    every worker takes the chief's (`Distribution.agreed_precision`)."""
    codes = ("float32", "mixed_bfloat16")

    class Cluster(distribute.Distribution):
        def __init__(self):  # two workers; the chief's value wins a max over -1
            self.num_workers, self.worker = 2, worker

        @property
        def is_chief(self):
            return self.worker == 0

        def agree(self, value, op):
            assert op == "max"
            return max(value, codes.index(chief) if self.worker else -1)

    assert Cluster().agreed_precision(mine, given) == expected
