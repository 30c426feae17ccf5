"""Latency of each serving signature of exported SavedModels (issue 7), in one run.

Loads the exports with `tf.saved_model.load` (no project code is needed to serve them) and
times every signature at batch 1 and 32: p50 and p95 milliseconds over --repeats calls after
one warm-up call. Requests: language model lines of 20 words the model itself generated
(`next_words` with --k, `score`), `generate` of 20 tokens sampled with --top_k / top_p 0.9;
speech: 1 s of audio (`transcribe_wav`) and 100 frames of log-mels (`transcribe_features`).

  python benchmarks/serving_latency.py --lm_export=saved_models/awd_lstm_wt2_cpu/1 \
      --speech_export=saved_models/las_digits/1 --repeats=20 --out=results/serving_latency.json
"""
import io
import wave

import common  # first: sys.path and oneDNN
import numpy as np
import tensorflow as tf
from absl import app, flags

flags.DEFINE_string("lm_export", "", "A language model's version folder (e.g. saved_models/lm/1).")
flags.DEFINE_string("speech_export", "", "A speech model's version folder.")
flags.DEFINE_integer("sample_rate", 8000, "The speech export's sample rate (the wav requests' "
                     "rate; spoken digits: 8000).")
flags.DEFINE_integer("k", 10, "next_words: words per line (at most the vocabulary - 1).")
flags.DEFINE_integer("top_k", 40, "generate: top_k (at most the vocabulary - 1).")
flags.DEFINE_integer("repeats", 20, "Timed calls per signature and batch size.")
flags.DEFINE_string("out", "", "Also write the JSON here.")
FLAGS = flags.FLAGS
BATCHES = (1, 32)


def timed(fn, inputs, repeats):
    # one warm-up call: the first call builds the graph's kernels
    _, seconds = common.timed(lambda: fn(**inputs), repeats, warmup=1)
    times = [1000 * s for s in seconds]
    return {"p50_ms": round(float(np.percentile(times, 50)), 2),
            "p95_ms": round(float(np.percentile(times, 95)), 2)}


def lm_requests(loaded, batch):
    sampled = loaded.signatures["generate"](  # words the model knows
        prompt=tf.constant([""]), num_tokens=tf.constant(50), temperature=tf.constant(1.0),
        top_k=tf.constant(0), top_p=tf.constant(1.0), seed=tf.constant(0, tf.int64))
    pool = [w.decode() for w in sampled["tokens"].numpy()[0]]
    rng = np.random.default_rng(batch)
    lines = tf.constant([" ".join(rng.choice(pool, 20)) for _ in range(batch)])
    return {"next_words": {"text": lines, "k": tf.constant(FLAGS.k)},
            "score": {"text": lines},
            "generate": {"prompt": lines, "num_tokens": tf.constant(20),
                         "temperature": tf.constant(1.0), "top_k": tf.constant(FLAGS.top_k),
                         "top_p": tf.constant(0.9), "seed": tf.constant(0, tf.int64)}}


def wav_bytes(samples, rate):
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((samples * 32767).astype(np.int16).tobytes())
    return buf.getvalue()


def speech_requests(loaded, batch, rate):
    rng = np.random.default_rng(batch)
    audio = [rng.uniform(-0.3, 0.3, rate).astype(np.float32) for _ in range(batch)]
    frames = int(np.ceil(rate / round(rate * 0.010)))
    return {"transcribe_wav": {"wav": tf.constant([wav_bytes(a, rate) for a in audio])},
            "transcribe_features": {
                "features": tf.constant(rng.normal(size=(batch, frames, 40)), tf.float32),
                "lengths": tf.fill([batch], frames)}}


def main():
    if not (FLAGS.lm_export or FLAGS.speech_export):
        raise app.UsageError("give --lm_export and/or --speech_export")
    out = {**common.record("serving_latency"), "repeats": FLAGS.repeats,
           "tensorflow": tf.__version__, "signatures": {}}
    if FLAGS.lm_export:
        lm = tf.saved_model.load(FLAGS.lm_export)
        out["lm_export"] = FLAGS.lm_export
        for batch in BATCHES:
            for name, inputs in lm_requests(lm, batch).items():
                out["signatures"].setdefault(name, {})[f"batch_{batch}"] = timed(
                    lm.signatures[name], inputs, FLAGS.repeats)
    if FLAGS.speech_export:
        speech = tf.saved_model.load(FLAGS.speech_export)
        rate = FLAGS.sample_rate
        out.update(speech_export=FLAGS.speech_export, sample_rate=rate)
        for batch in BATCHES:
            for name, inputs in speech_requests(speech, batch, rate).items():
                out["signatures"].setdefault(name, {})[f"batch_{batch}"] = timed(
                    speech.signatures[name], inputs, FLAGS.repeats)
    common.emit(out, FLAGS.out)


if __name__ == "__main__":
    common.run(main)
