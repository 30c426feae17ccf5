"""A/B of the memory allocator setting (`tfawd/core/runtime.py`, `configure_malloc`): glibc's
defaults (`TFAWD_MALLOC=system`: large blocks mmapped fresh and returned on free) against the
heap kept for reuse (tfawd's default), each arm a fresh process, the arms alternated.

Per arm: the two kernels the paper config's step spends most on beside the recurrence, at its
shape (an element-wise pass over the [N, V] bf16 products and the output layer's product,
N = 80 x 70 tokens, V = 33,278), then `benchmarks/lm_throughput.py` of `--config` without the
reference (training tokens/s, evaluation tokens/s), and each process's peak resident memory.

  python benchmarks/malloc_ab.py --config=configs/awd_lstm_wt2.cfg --out=F
"""
import json
import os
import subprocess
import sys
import tempfile

import common  # noqa: F401  (chooses oneDNN and the allocator before TensorFlow is imported)
from absl import flags

flags.DEFINE_string("config", "configs/awd_lstm_wt2.cfg", "Flagfile of the training step timed.")
flags.DEFINE_integer("repeats", 2, "Times each arm runs (alternated: system, tfawd, system, ...).")
flags.DEFINE_integer("steps", 6, "Timed training steps per lm_throughput round.")
flags.DEFINE_integer("rounds", 2, "lm_throughput rounds per arm run.")
flags.DEFINE_integer("eval_tokens_per_row", 500, "Evaluation tokens per row (lm_throughput).")
flags.DEFINE_bool("probe_only", False, "Time the two kernels only, not the training step.")
flags.DEFINE_string("out", None, "Also write the JSON here.")
flags.DEFINE_bool("child", False, "Internal: time the kernels in this process and print JSON.")
FLAGS = flags.FLAGS
ARMS = {"system": {"TFAWD_MALLOC": "system"}, "tfawd": {}}


def kernels(n: int = 80 * 70, v: int = 33278, e: int = 400, reps: int = 5) -> dict:
    """Best-of-`reps` milliseconds of the two kernels at the paper config's output shape."""
    import tensorflow as tf
    products = tf.cast(tf.random.normal([n, v]), tf.bfloat16)
    h = tf.cast(tf.random.normal([n, e]), tf.bfloat16)
    w = tf.cast(tf.random.normal([v, e]), tf.bfloat16)
    scale = tf.function(lambda p: p * tf.constant(2, tf.bfloat16), jit_compile=True)
    output = tf.function(lambda h, w: tf.matmul(h, w, transpose_b=True))
    out = {}
    for name, fn, args in (("elementwise_pass_ms", scale, (products,)),
                           ("output_product_ms", output, (h, w))):
        _, seconds = common.timed(lambda: fn(*args).numpy(), rounds=reps, warmup=1)
        out[name] = round(1000 * min(seconds), 1)
    return out


def run_arm(arm: str, argv: list) -> tuple:
    """Runs `argv` with the arm's environment: (stdout, peak resident MB of that process)."""
    env = {k: v for k, v in os.environ.items() if k != "TFAWD_MALLOC"}
    env.update(ARMS[arm])
    proc = subprocess.Popen(argv, cwd=common.REPO, env=env, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{arm}: {' '.join(argv)} failed (exit {proc.returncode})")
    return out, round(usage.ru_maxrss / 1024)


def main():
    if FLAGS.child:
        print(json.dumps({"kernels": kernels(), "malloc": common.runtime.machine()["malloc"]}))
        return
    runs = {arm: [] for arm in ARMS}
    for _ in range(FLAGS.repeats):
        for arm in ARMS:
            out, rss = run_arm(arm, [sys.executable, os.path.abspath(__file__), "--child"])
            row = {**json.loads(out.strip().splitlines()[-1]), "kernels_peak_rss_mb": rss}
            if not FLAGS.probe_only:
                with tempfile.NamedTemporaryFile(suffix=".json") as f:
                    _, rss = run_arm(arm, [
                        sys.executable, os.path.join(common.REPO, "benchmarks", "lm_throughput.py"),
                        f"--config={FLAGS.config}", f"--steps={FLAGS.steps}",
                        f"--rounds={FLAGS.rounds}", "--reference=false",
                        f"--eval_tokens_per_row={FLAGS.eval_tokens_per_row}", f"--out={f.name}"])
                    step = json.load(open(f.name))
                row["training_tokens_per_s"] = [r["tfawd"]["tokens_per_s"] for r in step["rounds"]]
                row["eval_tokens_per_s"] = step["eval_tokens_per_s"]
                row["step_peak_rss_mb"] = rss
                row["step_malloc"] = step["machine"]["malloc"]
            runs[arm].append(row)
            print(arm, json.dumps(row), flush=True)

    def median(arm, key, sub=None):
        values = []
        for row in runs[arm]:
            value = row[key] if sub is None else row[key][sub]
            values.extend(value if isinstance(value, list) else [value])
        return common.spread(values)["median"]
    summary = {f"{k}_system_over_tfawd":
               median("system", "kernels", k) / median("tfawd", "kernels", k)
               for k in ("elementwise_pass_ms", "output_product_ms")}
    if not FLAGS.probe_only:
        summary["training_tokens_per_s_tfawd_over_system"] = (
            median("tfawd", "training_tokens_per_s") / median("system", "training_tokens_per_s"))
        for b in runs["tfawd"][0]["eval_tokens_per_s"]:
            summary[f"eval_{b}_tokens_per_s_tfawd_over_system"] = (
                median("tfawd", "eval_tokens_per_s", b) / median("system", "eval_tokens_per_s", b))
        summary["step_peak_rss_mb"] = {arm: max(r["step_peak_rss_mb"] for r in runs[arm])
                                       for arm in ARMS}
    common.emit({**common.record("malloc_ab"), "config": FLAGS.config, "arms": ARMS,
                 "runs": runs, "summary": summary}, FLAGS.out)


if __name__ == "__main__":
    common.run(main)
