"""Two local workers against one process on this machine (issue 18's scaling note).

  python benchmarks/distributed_scaling.py --config=configs/lstm_base_wt2_cpu.cfg \\
      --steps=300 --out=results/distributed_scaling_<cpu>.json

1. Equality: `main.py --flagfile=<config> --dropout=0 --precision=float32 --max_steps=20`
   as one process and as 2 workers (`python -m tfawd.launch`); the largest difference of
   any checkpointed float between the two run folders.
2. Throughput: the config as it is (its precision), --steps steps, one process with 2 threads
   against 2 workers with 1 thread each; tokens/s is the median of the logged rates after the
   first log interval (tracing excluded).
3. The all-reduce alone: 2 workers all-reduce a float32 tensor of the model's parameter count
   (what one step's gradients are) --repeats times; seconds per all-reduce and bytes.

Prints and writes JSON with the machine.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile

import common  # first: sys.path and oneDNN
from absl import flags

from tfawd.core import distribute, runtime

flags.DEFINE_string("config", "configs/lstm_base_wt2_cpu.cfg", "Flagfile of the model.")
flags.DEFINE_integer("steps", 300, "Training steps of each throughput run.")
flags.DEFINE_integer("repeats", 30, "All-reduces timed.")
flags.DEFINE_string("out", "", "Write the JSON here too.")
flags.DEFINE_integer("allreduce_elements", 0, "Internal: run as an all-reduce worker.")
flags.DEFINE_integer("intra_op_threads", 0, "Internal (set by the launcher).")
flags.DEFINE_integer("inter_op_threads", 0, "Internal (set by the launcher).")
distribute.define_flags(flags.FLAGS)
FLAGS = flags.FLAGS


def main_py(model_dir, *extra, workers=0):
    argv = [f"--flagfile={FLAGS.config}", f"--model_dir={model_dir}", "--final_test=false",
            "--checkpoint_every=100000", *extra]
    if workers:
        cmd = [sys.executable, "-m", "tfawd.launch", f"--workers={workers}",
               "--threads_per_worker=1", "--", *argv]
    else:
        cmd = [sys.executable, "main.py", *argv]
    proc, (seconds,) = common.timed(
        lambda: subprocess.run(cmd, cwd=common.REPO, capture_output=True, text=True))
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return seconds


def max_difference(a_dir, b_dir) -> dict:
    """The largest difference of a checkpointed float (absolute, and relative to the largest
    magnitude of its variable); names a non-float that differs."""
    import numpy as np
    import tensorflow as tf

    def load(d):
        r = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(d, "ckpt")))
        return {k: r.get_tensor(k) for k in r.get_variable_to_shape_map()
                if "OBJECT_GRAPH" not in k}
    a, b = load(a_dir), load(b_dir)
    worst = {"max_abs_difference": 0.0, "max_relative_difference": 0.0}
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if "train_seconds" in k:  # a clock
            continue
        if x.dtype.kind == "f" and x.size and np.isfinite(x).all():
            diff = float(np.max(np.abs(x.astype(np.float64) - y)))
            scale = max(float(np.max(np.abs(x))), 1e-30)
            worst["max_abs_difference"] = max(worst["max_abs_difference"], diff)
            worst["max_relative_difference"] = max(worst["max_relative_difference"],
                                                   diff / scale)
        elif x.dtype.kind != "f" and not np.array_equal(x, y):
            worst["unequal_non_float"] = k
    return worst


def rate(model_dir) -> float:
    history = json.load(open(os.path.join(model_dir, "history.json")))
    rates = [h["tokens_per_s"] for h in history if "tokens_per_s" in h][1:]
    return statistics.median(rates)


def allreduce_worker():
    """One worker of part 3: prints 'ALLREDUCE <seconds per all-reduce>' (the chief)."""
    import tensorflow as tf
    runtime.set_threads(FLAGS.inter_op_threads, FLAGS.intra_op_threads)
    dist = distribute.make(distribute.from_flags(FLAGS))
    n = FLAGS.allreduce_elements

    @tf.function
    def reduce():
        def fn():
            ctx = tf.distribute.get_replica_context()
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.ones([n], tf.float32))
        return dist.strategy.run(fn)

    def repeated():
        for _ in range(FLAGS.repeats):
            out = reduce()
        float(tf.reduce_sum(dist.strategy.experimental_local_results(out)[0]))
    reduce()  # warm-up: tracing and the first collective's setup
    _, (seconds,) = common.timed(repeated)
    if dist.is_chief:
        print(f"ALLREDUCE {seconds / FLAGS.repeats}", flush=True)


def main():
    if FLAGS.allreduce_elements:
        return allreduce_worker()
    tmp = tempfile.mkdtemp(prefix="tfawd-scaling-")
    check = ["--dropout=0", "--precision=float32", "--max_steps=20", "--log_every=5"]
    main_py(f"{tmp}/check_single", *check)
    main_py(f"{tmp}/check_workers", *check, workers=2)
    difference = max_difference(f"{tmp}/check_single", f"{tmp}/check_workers")

    timed = [f"--max_steps={FLAGS.steps}", "--log_every=25"]
    wall_single = main_py(f"{tmp}/single", *timed, "--intra_op_threads=2",
                          "--inter_op_threads=2")
    wall_workers = main_py(f"{tmp}/workers", *timed, workers=2)
    results = json.load(open(f"{tmp}/single/results.json"))
    params = results["num_parameters"]

    proc = subprocess.run(
        [sys.executable, "-m", "tfawd.launch", "--workers=2", "--threads_per_worker=1",
         f"--script={os.path.abspath(__file__)}", "--",
         f"--allreduce_elements={params}", f"--repeats={FLAGS.repeats}"],
        cwd=common.REPO, capture_output=True, text=True)
    line = [x for x in proc.stdout.splitlines() if "ALLREDUCE" in x]
    if not line:
        sys.exit(f"all-reduce run failed:\n{proc.stdout[-3000:]}")
    seconds = float(line[0].split()[-1])
    single, workers = rate(f"{tmp}/single"), rate(f"{tmp}/workers")
    tokens_per_step = results["train_tokens"] / results["steps"]
    out = {
        **common.record("distributed_scaling"), "config": FLAGS.config, "steps": FLAGS.steps,
        "precision": results["precision"],
        "equality_check": {"command": f"main.py --flagfile={FLAGS.config} "
                                      + " ".join(check),
                           **difference},
        "tokens_per_s": {"1_process_2_threads": single, "2_workers_1_thread": workers,
                         "ratio_workers_over_single": workers / single},
        "wall_seconds": {"1_process_2_threads": wall_single, "2_workers_1_thread": wall_workers},
        "allreduce": {"elements": params, "bytes": 4 * params,
                      "seconds": seconds, "repeats": FLAGS.repeats,
                      "share_of_a_2_worker_step": seconds / (tokens_per_step / workers)},
    }
    common.emit(out, FLAGS.out)


if __name__ == "__main__":
    common.run(main)
