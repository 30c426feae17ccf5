"""Serving under load (issue 28): concurrent clients against loaded SavedModels, and the TF
Serving batching parameters those measurements support.

Loads each export with `tf.saved_model.load` (as a server would, no project code) and, for
each signature, runs --clients concurrent client threads (default 1, 4 and 16) for --seconds
each, every client sending batch-1 requests back to back (the requests of
benchmarks/serving_latency.py); records requests/s, p50/p99 latency and failures per
concurrency. Then one client at batch sizes --batch_sizes: p50 latency and items/s, from which
the batching file for TF Serving's `--enable_batching --batching_parameters_file=` follows:
`max_batch_size` the smallest batch reaching 90% of the best items/s, `batch_timeout_micros`
the batch-1 p50 latency of next_words (a request waits at most about one service time for
company), `num_batch_threads` the cores, `max_enqueued_batches` enough for the largest
concurrency measured.

  python benchmarks/serving_load.py --lm_export=saved_models/lm/1 \
      --speech_export=saved_models/las_an4/1 --sample_rate=0 --seconds=10 \
      --out=results/serving_load.json --batching_out=configs/serving/batching_parameters.txt
"""
import os
import threading
import time

import common  # first: sys.path and oneDNN
import numpy as np
import serving_latency  # its flags and requests  # noqa: F401
import tensorflow as tf
from absl import app, flags

flags.DEFINE_list("clients", ["1", "4", "16"], "Concurrent clients to measure.")
flags.DEFINE_float("seconds", 10.0, "Seconds of load per signature and concurrency.")
flags.DEFINE_list("batch_sizes", ["1", "2", "4", "8", "16", "32"],
                  "Batch sizes of the one-client latency sweep.")
flags.DEFINE_string("batching_out", "", "Write TF Serving batching parameters here.")
FLAGS = flags.FLAGS


def load(fn, inputs, clients: int, seconds: float) -> dict:
    """`clients` threads calling fn(**inputs) back to back for `seconds`."""
    fn(**inputs)  # traced and warm before the clock starts
    latencies, failures, lock = [], [], threading.Lock()
    stop = time.perf_counter() + seconds

    def client():
        mine, bad = [], 0
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                fn(**inputs)
            except tf.errors.OpError:
                bad += 1
                continue
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)
            failures.append(bad)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    begun = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - begun
    ms = 1000 * np.asarray(latencies)
    return {"clients": clients, "requests": len(latencies), "failures": int(sum(failures)),
            "requests_per_s": round(len(latencies) / elapsed, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None}


def sweep(fn, requests_of, batch_sizes) -> dict:
    """One client: p50 latency and items/s per batch size."""
    out = {}
    for b in batch_sizes:
        inputs = requests_of(b)
        _, seconds = common.timed(lambda: fn(**inputs), 10, warmup=1)
        p50 = float(np.percentile(seconds, 50))
        out[str(b)] = {"p50_ms": round(1000 * p50, 2), "items_per_s": round(b / p50, 2)}
    return out


def batching_parameters(by_batch: dict, clients: int) -> dict:
    best = max(v["items_per_s"] for v in by_batch.values())
    size = min(int(b) for b, v in by_batch.items() if v["items_per_s"] >= 0.9 * best)
    return {"max_batch_size": size,
            "batch_timeout_micros": int(1000 * by_batch["1"]["p50_ms"]),
            "num_batch_threads": os.cpu_count(),
            "max_enqueued_batches": max(clients, 16)}


def batching_text(params: dict, source: str) -> str:
    lines = [f"# TF Serving --batching_parameters_file, from {source}"]
    lines += [f"{k} {{ value: {v} }}" for k, v in params.items()]
    return "\n".join(lines) + "\n"


def measure(loaded, requests_of, names) -> dict:
    out = {}
    single = requests_of(1)
    for name in names:
        fn = loaded.signatures[name]
        out[name] = {"load": [load(fn, single[name], int(c), FLAGS.seconds)
                              for c in FLAGS.clients],
                     "by_batch": sweep(fn, lambda b, name=name: requests_of(b)[name],
                                       [int(b) for b in FLAGS.batch_sizes])}
        one, most = out[name]["load"][0], out[name]["load"][-1]
        out[name]["speedup_at_most_clients"] = round(
            most["requests_per_s"] / max(one["requests_per_s"], 1e-9), 2)
    return out


def main():
    if not (FLAGS.lm_export or FLAGS.speech_export):
        raise app.UsageError("give --lm_export and/or --speech_export")
    out = {**common.record("serving_load"), "seconds": FLAGS.seconds,
           "clients": [int(c) for c in FLAGS.clients], "signatures": {}}
    if FLAGS.lm_export:
        lm = tf.saved_model.load(FLAGS.lm_export)
        out["lm_export"] = FLAGS.lm_export
        out["signatures"].update(measure(lm, lambda b: serving_latency.lm_requests(lm, b),
                                         ("next_words", "score", "generate")))
    if FLAGS.speech_export:
        speech = tf.saved_model.load(FLAGS.speech_export)
        rate = FLAGS.sample_rate
        names = ("transcribe_wav", "transcribe_features") if rate else ("transcribe_features",)
        out.update(speech_export=FLAGS.speech_export, sample_rate=rate)
        out["signatures"].update(measure(
            speech, lambda b: serving_latency.speech_requests(speech, b, rate or 8000), names))
    if FLAGS.lm_export:
        params = batching_parameters(out["signatures"]["next_words"]["by_batch"],
                                     max(out["clients"]))
        out["batching_parameters"] = params
        if FLAGS.batching_out:
            with open(FLAGS.batching_out, "w") as f:
                m = out["machine"]
                f.write(batching_text(params, f"benchmarks/serving_load.py on {m['cpu']}, "
                                              f"{m['cores']} cores ({out['timestamp']})"))
            out["batching_out"] = FLAGS.batching_out
    common.emit(out, FLAGS.out)


if __name__ == "__main__":
    common.run(main)
