"""How fast the evaluations run, against the memory floor of dynamic evaluation (issue 25).

In one process, on the config's model (untrained weights: speed does not depend on them) and
the first --tokens of the validation split:
- the machine's memory bandwidth: the best of several large NumPy copies (bytes read + written
  per second);
- dynamic evaluation (`tfawd.lm.dynamic_eval`, batch 1, 5-token segments): tokens/s, seconds a
  segment, and the bytes a segment's update must move (`update_bytes`: each weight, gradient,
  trained weight and RMS read, the weight written), so `fraction_of_floor` = (bytes /
  bandwidth) / seconds a segment: 1.0 would be a segment costing only its update's memory
  traffic;
- batch-1 evaluation (the reference's protocol for test) and the cache pointer (its model pass
  and the cache's scoring of a 2 x 2 grid) at --bptt.
Every timed call runs once untimed first (tracing, XLA compiles), then --rounds times: the
median is reported, each round beside it.

  python benchmarks/eval_speed.py --config=configs/awd_lstm_wt2_cpu.cfg --out=F
"""
import common  # first: sys.path and oneDNN
import numpy as np
from absl import flags

from tfawd import families
from tfawd.lm import config

flags.DEFINE_integer("tokens", 2000, "Validation tokens each evaluation scores.")
flags.DEFINE_integer("copy_mb", 512, "Size of the arrays the bandwidth copy moves.")
flags.DEFINE_integer("grad_batches", 5, "Training windows for the gradient statistics.")
flags.DEFINE_integer("rounds", 3, "Timed calls of each evaluation (after one untimed); the "
                     "median is reported (this machine's speed is bimodal from call to call).")
flags.DEFINE_string("out", None, "Also write the JSON here.")
families.define_flags(flags.FLAGS)  # run-level and family flags, as main.py
FLAGS = flags.FLAGS


def memory_bandwidth(megabytes: int, reps: int = 5) -> float:
    """Bytes read + written per second by the best of `reps` copies of `megabytes`."""
    src = np.ones(megabytes * 2**20 // 4, np.float32)
    dst = np.empty_like(src)
    _, seconds = common.timed(lambda: np.copyto(dst, src), reps)
    return 2 * src.nbytes / common.spread(seconds)["min"]


def timed(fn, rounds: int):
    """fn() once to warm up, then `rounds` times timed: (result, median seconds, all)."""
    out, seconds = common.timed(fn, rounds, warmup=1)
    return out, common.spread(seconds)["median"], seconds


def main():
    import keras

    from pipelines.lm_corpus import load_corpus
    from tfawd.lm import dynamic_eval, pointer
    from tfawd.lm.evaluation import Evaluator
    from tfawd.lm.models import build_model, resolve_cutoffs
    from tfawd.lm.training import configure_runtime, vocab_order
    cfg = config.from_flags(FLAGS)
    configure_runtime(cfg)
    corpus = load_corpus(cfg.dataset, cfg.data_dir, order=vocab_order(cfg))
    cfg = resolve_cutoffs(cfg, corpus.word_counts())
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg, len(corpus.vocab))
    params = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    ids = corpus.ids["valid"][:FLAGS.tokens + 1]
    bandwidth = memory_bandwidth(FLAGS.copy_mb)

    rms = dynamic_eval.gradient_rms(model, corpus.ids["train"], batch_size=100, bptt=5,
                                    max_batches=FLAGS.grad_batches)
    evaluator = dynamic_eval.DynamicEvaluator(model, rms)
    seg = cfg.dynamic_eval_bptt
    dyn, dyn_s, dyn_all = timed(lambda: evaluator.evaluate(ids, lr=5e-5, lam=0.002, bptt=seg),
                                FLAGS.rounds)
    segments = -(-dyn["tokens"] // seg)
    per_segment = dyn_s / segments
    nbytes = 5 * 4 * params  # dynamic_eval.update_bytes(model)
    floor = nbytes / bandwidth

    static = Evaluator(model)
    b1, b1_s, b1_all = timed(lambda: static.evaluate(ids, 1, cfg.bptt), FLAGS.rounds)
    cache = lambda: pointer.evaluate_with_cache(model, ids, 1, cfg.bptt, 2000, [0.5, 1.0],  # noqa
                                                [0.1, 0.2])
    _, cache_s, cache_all = timed(cache, FLAGS.rounds)
    result = {
        **common.record("eval_speed"), "config": common.config_path(),
        "precision": cfg.precision, "parameters": params, "tokens": dyn["tokens"],
        "memory_bandwidth_gb_per_s": bandwidth / 1e9,
        "dynamic_eval": {"tokens_per_s": dyn["tokens"] / dyn_s, "segment_tokens": seg,
                         "seconds_per_segment": per_segment, "update_bytes_per_segment": nbytes,
                         "floor_seconds_per_segment": floor,
                         "floor_tokens_per_s": seg / floor,
                         "fraction_of_floor": floor / per_segment,
                         "chunk_segments": getattr(evaluator, "chunk", 1),
                         "rounds_tokens_per_s": [dyn["tokens"] / s for s in dyn_all]},
        "batch_1": {"tokens_per_s": b1["tokens"] / b1_s, "bptt": cfg.bptt,
                    "rounds_tokens_per_s": [b1["tokens"] / s for s in b1_all]},
        "cache_pointer": {"tokens_per_s": dyn["tokens"] / cache_s, "window": 2000,
                          "grid": "2 thetas x 2 lambdas", "bptt": cfg.bptt,
                          "rounds_tokens_per_s": [dyn["tokens"] / s for s in cache_all]},
    }
    common.emit(result, FLAGS.out)


if __name__ == "__main__":
    common.run(main)
