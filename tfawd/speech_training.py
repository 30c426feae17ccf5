"""Training and evaluating the Listen-Attend-Spell recogniser (`--model=las`; issue 6).

The step and the decoders are `tf.function`s traced once (shape-polymorphic signatures):
cross-entropy with label smoothing over the unpadded characters (plus, with
--guided_attention, that weight times `las.guided_attention_loss`, which is logged as
`train_guided_attention` whether or not it is weighted in), Adam with global-norm clipping,
teacher forcing on a linear schedule per epoch. Each epoch ends with greedy decoding of the
validation split (CER/WER to TensorBoard with the attention images of its first utterances)
and keeps the weights of the best validation CER in `best/`. A run resumes from
`ckpt/` at the batch where it stopped (weights, optimizer, epoch, batch, best CER).

At the end the best weights decode every evaluation split greedily and with beam search, and
the run writes results.json (CER/WER per split, diagonality), attention PNGs and
attention.npy for the first 10 validation utterances, and a training-curve PNG.
"""
import contextlib
import dataclasses
import json
import logging
import os
import time

import keras
import numpy as np
import tensorflow as tf

from pipelines import speech_features, speech_sources, spoken_digits
from pipelines.speech_features import CharVocab
from tfawd import reporting, speech_eval
from tfawd.checkpoints import RunCheckpoints
from tfawd.las import ListenAttendSpell, encoder_frames, guided_attention_loss
from tfawd.run_dir import RunDir
from tfawd.run_guard import ModelDirLock, StopSignals, check_finite

N_ATTENTION = 10  # validation utterances whose attention is plotted and saved


def sources(cfg) -> tuple:
    """(split -> source dataset, sample rate) for --dataset."""
    if cfg.dataset == "spoken_digits":
        kw = dict(seed=cfg.seed, max_digits=cfg.max_digits, heldout_speaker=cfg.heldout_speaker)
        splits = {"train": cfg.train_utterances, "valid": cfg.eval_utterances,
                  "test": cfg.eval_utterances}
        if cfg.heldout_speaker:
            splits["heldout"] = cfg.eval_utterances
        return ({s: spoken_digits.dataset(cfg.data_dir, s, n, **kw) for s, n in splits.items()},
                spoken_digits.SAMPLE_RATE)
    if cfg.dataset == "espeak":
        from pipelines import espeak_synth  # needs espeakng-loader
        out = cfg.espeak_dir or os.path.join(os.path.dirname(os.path.abspath(cfg.model_dir)),
                                             "espeak_corpus")
        info = espeak_synth.build_corpus(
            cfg.data_dir, out, sizes={"train": cfg.train_utterances, "valid": cfg.eval_utterances,
                                      "test": cfg.eval_utterances}, seed=cfg.seed)
        return ({s: espeak_synth.load_split(out, s) for s in ("train", "valid", "test")},
                int(info["sample_rate"]))
    if cfg.dataset == "manifest":
        paths = cfg.manifest.split(",")
        if len(paths) != 3:
            raise ValueError("--manifest needs train,valid,test TSV files (comma-separated)")
        rate = int(tf.audio.decode_wav(tf.io.read_file(
            speech_sources.read_manifest(paths[0])[0][0]))[1])
        return ({s: speech_sources.manifest_dataset(p)
                 for s, p in zip(("train", "valid", "test"), paths)}, rate)
    if cfg.dataset == "npy":
        return ({"train": speech_sources.npy_dataset(cfg.npy_prefix, "train"),
                 "valid": speech_sources.npy_dataset(cfg.npy_prefix, "dev")}, 0)
    raise ValueError(f"--dataset={cfg.dataset} is not speech data")


def featurized(cfg, vocab) -> tuple:
    """(split -> cached dataset of featurized examples, sample rate)."""
    srcs, rate = sources(cfg)
    fn = speech_features.featurize(rate, vocab)
    return {s: d.map(fn, num_parallel_calls=tf.data.AUTOTUNE).cache()
            for s, d in srcs.items()}, rate


def build_las(cfg, vocab: CharVocab) -> ListenAttendSpell:
    model = ListenAttendSpell(len(vocab), vocab.sos_id, vocab.eos_id, cfg.listener_units,
                              cfg.speller_units, cfg.attention_dim, cfg.char_embed_dim,
                              cfg.pyramid_layers, cfg.frame_stack, cfg.attention_window,
                              cfg.attention_window_back, cfg.max_chars_per_frame)
    model.teacher_forced(tf.zeros([1, 4, speech_features.N_MELS]), tf.constant([4]),
                         tf.constant([[vocab.eos_id]]))
    return model


def teacher_forcing_rate(cfg, epoch: int) -> float:
    """Linear from --teacher_forcing to --teacher_forcing_final over --teacher_forcing_epochs."""
    frac = min(1.0, epoch / max(cfg.teacher_forcing_epochs, 1))
    return cfg.teacher_forcing + frac * (cfg.teacher_forcing_final - cfg.teacher_forcing)


def sequence_loss(logits, labels, smoothing: float):
    """Mean label-smoothed cross-entropy over the non-pad characters (pad id 0)."""
    mask = tf.cast(labels > 0, tf.float32)
    targets = tf.one_hot(labels, tf.shape(logits)[-1]) * (1 - smoothing) + smoothing / tf.cast(
        tf.shape(logits)[-1], tf.float32)
    nll = tf.nn.softmax_cross_entropy_with_logits(targets, logits)
    return tf.reduce_sum(nll * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


BATCH_SPEC = (tf.TensorSpec([None, None, speech_features.N_MELS], tf.float32),
              tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, None], tf.int32))


def make_train_step(model, optimizer, cfg):
    """(features, frames, labels, teacher forcing rate, seed [2]) -> (cross-entropy, guided
    attention loss before its weight); minimises cross-entropy + --guided_attention times
    the latter; traced once."""
    optimizer.build(model.trainable_variables)
    listener = model.listener

    @tf.function(input_signature=BATCH_SPEC + (tf.TensorSpec([], tf.float32),
                                               tf.TensorSpec([2], tf.int32)))
    def step(features, frames, labels, rate, seed):
        with tf.GradientTape() as tape:
            logits, attention = model.teacher_forced(features, frames, labels, rate, seed,
                                                     training=True)
            loss = sequence_loss(logits, labels, cfg.label_smoothing)
            guided = guided_attention_loss(
                attention, tf.reduce_sum(tf.cast(labels > 0, tf.int32), axis=1),
                encoder_frames(frames, listener.frame_stack, listener.pyramid_layers),
                cfg.guided_attention_width)
            total = loss + cfg.guided_attention * guided if cfg.guided_attention else loss
        grads = tape.gradient(total, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss, guided
    return step


def make_decoder(model, max_len: int, beam_size: int = 1):
    """(features, frames) -> (tokens [B, max_len], scores [B], attention [B, max_len, T'])."""
    @tf.function(input_signature=BATCH_SPEC[:2])
    def decode(features, frames):
        if beam_size == 1:
            return model.greedy(features, frames, max_len)
        return model.beam_search(features, frames, max_len, beam_size)
    return decode


def transcribe(decode, data, vocab, frame_stack=1, pyramid_layers=0) -> dict:
    """Decodes a batched split: hypotheses, references, attention maps (trimmed to output
    length incl. <eos> and to the utterance's encoder frames), in dataset order."""
    out = {"hyps": [], "refs": [], "attention": [], "out_lengths": [], "frames": [], "steps": []}
    for batch in data:
        tokens, _, attn = decode(batch["features"], batch["frames"])
        enc = encoder_frames(batch["frames"].numpy(), frame_stack, pyramid_layers)
        for tok, a, n, ref in zip(tokens.numpy(), attn.numpy(), enc, batch["transcript"].numpy()):
            hyp = vocab.decode(tok)
            eos = np.flatnonzero(tok == vocab.eos_id)
            length = int(eos[0]) + 1 if eos.size else len(tok)  # decoder steps up to <eos>
            out["hyps"].append(hyp)
            out["refs"].append(ref.decode())
            out["attention"].append(a[:length, :n])
            out["out_lengths"].append(length)
            out["steps"].append([vocab.tokens[i] for i in tok[:length]])  # row labels of a plot
            out["frames"].append(int(n))
    return out


def eval_batches(data, batch_size):
    return data.padded_batch(batch_size, padding_values={"features": 0.0, "frames": 0,
                                                        "labels": 0, "transcript": ""})


def _write_attention(model_dir, result, n=N_ATTENTION) -> dict:
    """PNGs + attention.npy (padded [n, L, T]) of the first n validation utterances."""
    folder = RunDir(model_dir).attention
    os.makedirs(folder, exist_ok=True)
    maps = result["attention"][:n]
    padded = np.zeros([len(maps), max(m.shape[0] for m in maps), max(m.shape[1] for m in maps)],
                      np.float32)
    for i, m in enumerate(maps):
        padded[i, :m.shape[0], :m.shape[1]] = m
        speech_eval.plot_attention(m, result["steps"][i],
                                   os.path.join(folder, f"valid_{i:02d}.png"),
                                   f"ref: {result['refs'][i]}\nhyp: {result['hyps'][i]}")
    np.save(RunDir(model_dir).attention_npy, padded)
    return speech_eval.diagonality(maps, result["out_lengths"][:n], result["frames"][:n])


class SpeechTrainer:
    """Owns the LAS model, optimizer, data, checkpoints and logs of one `model_dir`."""

    def __init__(self, cfg):
        self.cfg, self.vocab = cfg, CharVocab()
        keras.utils.set_random_seed(cfg.seed)
        self.data, self.sample_rate = featurized(cfg, self.vocab)
        self.model = build_las(cfg, self.vocab)
        self.optimizer = keras.optimizers.Adam(cfg.lr, global_clipnorm=cfg.clip or None,
                                               use_ema=cfg.ema_decay > 0,
                                               ema_momentum=cfg.ema_decay or 0.99)
        self.train_step = make_train_step(self.model, self.optimizer, cfg)
        self.greedy = make_decoder(self.model, cfg.max_decode_len)
        self.run = tf.Module()
        for name, value in (("epoch", 0), ("batch", 0), ("step", 0)):
            setattr(self.run, name, tf.Variable(value, dtype=tf.int64, trainable=False))
        self.run.best_cer = tf.Variable(np.inf, dtype=tf.float64, trainable=False)
        self.run.seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        ckpts = RunCheckpoints(self.model, cfg.model_dir, optimizer=self.optimizer, run=self.run)
        self.manager, self.best = ckpts.manager, ckpts.best
        self.history_path, self.history = ckpts.history_path, ckpts.history
        if ckpts.resumed:
            logging.info("Resumed at epoch %d, batch %d", int(self.run.epoch), int(self.run.batch))
        tb = RunDir(cfg.model_dir).tb
        self.writers = {k: tf.summary.create_file_writer(os.path.join(tb, k))
                        for k in ("train", "valid")}

    def epoch_batches(self, epoch: int):
        seed = self.cfg.seed * 1000 + epoch
        return speech_features.batches(self.data["train"], self.cfg.batch_size, shuffle_seed=seed,
                                       augment_seed=seed if self.cfg.spec_augment else None)

    def save(self):
        reporting.write_json(self.history_path, self.history)
        self.manager.save(checkpoint_number=int(self.run.step))

    def train(self) -> str:
        """Trains until an epoch, step or time bound; returns why it stopped."""
        with StopSignals() as signals:
            return self._train(signals)

    def _train(self, signals) -> str:
        cfg, run = self.cfg, self.run
        start = time.perf_counter()
        while int(run.epoch) < cfg.max_epochs:
            epoch, rate = int(run.epoch), teacher_forcing_rate(cfg, int(run.epoch))
            self.optimizer.learning_rate.assign(cfg.lr * cfg.lr_epoch_decay ** epoch)
            losses, frames, t0 = [], 0, time.perf_counter()
            for batch in self.epoch_batches(epoch).skip(int(run.batch)):
                seed = tf.constant([cfg.seed, int(run.step)], tf.int32)
                losses.append([float(x) for x in self.train_step(
                    batch["features"], batch["frames"], batch["labels"], rate, seed)])
                check_finite(int(run.step) + 1, {"loss": losses[-1][0]},
                             self.manager.latest_checkpoint)
                frames += int(tf.reduce_sum(batch["frames"]))
                run.step.assign_add(1)
                run.batch.assign_add(1)
                stop = signals.received or self._stop_reason(start)
                if int(run.step) % cfg.log_every == 0 or stop:
                    self._log(losses, frames, time.perf_counter() - t0, rate)
                    losses, frames, t0 = [], 0, time.perf_counter()
                if signals.received:  # SIGTERM / Ctrl-C: this step's checkpoint, then exit
                    self.save()
                    raise signals.interrupted(int(run.step), self.manager.latest_checkpoint)
                if stop:
                    self.save()
                    return stop
            if losses:
                self._log(losses, frames, time.perf_counter() - t0, rate)
            self._end_epoch()
        return "max_epochs"

    def _stop_reason(self, start):
        if self.cfg.max_steps and int(self.run.step) >= self.cfg.max_steps:
            return "max_steps"
        if self.cfg.time_budget_min and time.perf_counter() - start > 60 * self.cfg.time_budget_min:
            return "time_budget"
        return None

    def _log(self, losses, frames, seconds, rate):
        run = self.run
        run.seconds.assign_add(seconds)
        loss, guided = np.mean(losses, axis=0)
        entry = {"step": int(run.step), "epoch": int(run.epoch) + 1, "train_loss": float(loss),
                 "train_guided_attention": float(guided),
                 "frames_per_s": frames / max(seconds, 1e-9), "teacher_forcing": rate,
                 "lr": float(self.optimizer.learning_rate.numpy())}
        self.history.append(entry)
        print(" - ".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}"
                         for k, v in entry.items()), flush=True)
        with self.writers["train"].as_default(step=int(run.step)):
            tf.summary.scalar("loss", entry["train_loss"])
            tf.summary.scalar("guided_attention", entry["train_guided_attention"])
            tf.summary.scalar("frames_per_s", entry["frames_per_s"])
            tf.summary.scalar("teacher_forcing", rate)

    def validate(self, images: bool = False) -> dict:
        result = transcribe(self.greedy, eval_batches(self.data["valid"], self.cfg.batch_size),
                            self.vocab, self.cfg.frame_stack, self.cfg.pyramid_layers)
        scores = speech_eval.error_rates(result["hyps"], result["refs"])
        scores.update(speech_eval.diagonality(result["attention"], result["out_lengths"],
                                              result["frames"]))
        with self.writers["valid"].as_default(step=int(self.run.step)):
            for k in ("cer", "wer", "monotonic", "monotonic_within_tolerance", "near_peak_mass"):
                tf.summary.scalar(k, scores[k])
            if images:
                pics = [speech_eval.attention_image(a, steps, r) for a, steps, r in zip(
                    result["attention"], result["steps"], result["refs"])][:N_ATTENTION]
                for i, pic in enumerate(pics):
                    tf.summary.image(f"attention/valid_{i:02d}", pic[None], step=int(self.run.step))
        return scores

    @contextlib.contextmanager
    def averaged_weights(self):
        """Within: the model holds the moving average of its weights (--ema_decay; else
        nothing changes); the trained weights come back on exit."""
        if not self.optimizer.use_ema:
            yield
            return
        variables = self.model.trainable_variables
        kept = [tf.identity(v) for v in variables]
        self.optimizer.finalize_variable_values(variables)
        try:
            yield
        finally:
            for v, value in zip(variables, kept):
                v.assign(value)

    def _end_epoch(self):
        run = self.run
        with self.averaged_weights():  # validated, and kept as best, averaged
            scores = self.validate(images=True)
            if scores["cer"] < float(run.best_cer):
                run.best_cer.assign(scores["cer"])
                self.best.save()
        self.history.append({"step": int(run.step), "epoch": int(run.epoch) + 1,
                             **{f"val_{k}": v for k, v in scores.items()}})
        print(f"epoch {int(run.epoch) + 1}: valid CER {scores['cer']:.4f} WER {scores['wer']:.4f}"
              f" monotonic {scores['monotonic']:.3f}", flush=True)
        run.epoch.assign_add(1)
        run.batch.assign(0)
        self.save()

    def evaluate_best(self) -> dict:
        """Every evaluation split with the best weights, greedy and beam search; attention
        outputs of the first validation utterances."""
        if not self.best.latest_checkpoint:
            raise RuntimeError(f"no trained weights in {self.cfg.model_dir}/best: train first")
        self.best.checkpoint.restore(self.best.latest_checkpoint).assert_consumed()
        decoders = {"greedy": self.greedy}
        if self.cfg.beam_size > 1:
            decoders["beam"] = make_decoder(self.model, self.cfg.max_decode_len, self.cfg.beam_size)
        metrics = {}
        for split in [s for s in self.data if s != "train"]:
            for name, decode in decoders.items():
                t0 = time.perf_counter()
                result = transcribe(decode, eval_batches(self.data[split], self.cfg.batch_size),
                                    self.vocab, self.cfg.frame_stack, self.cfg.pyramid_layers)
                scores = speech_eval.error_rates(result["hyps"], result["refs"])
                scores.update(utterances=len(result["hyps"]),
                              seconds=round(time.perf_counter() - t0, 2),
                              examples=[{"ref": r, "hyp": h} for r, h in
                                        zip(result["refs"][:5], result["hyps"][:5])])
                metrics[f"{split}_{name}"] = scores
                if split == "valid" and name == "greedy":
                    metrics["diagonality_first10"] = _write_attention(self.cfg.model_dir, result)
                    metrics["diagonality_valid"] = speech_eval.diagonality(
                        result["attention"], result["out_lengths"], result["frames"])
                print(f"{split} ({name}): CER {scores['cer']:.4f} WER {scores['wer']:.4f}",
                      flush=True)
        return metrics


def train(cfg) -> dict:
    with ModelDirLock(cfg.model_dir):  # one trainer per run folder
        return _train_locked(cfg)


def _train_locked(cfg) -> dict:
    start = time.perf_counter()
    trainer = SpeechTrainer(cfg)
    reporting.record_command(cfg.model_dir)
    stopped = trainer.train()
    if not trainer.best.latest_checkpoint:  # stopped before its first validation
        trainer.best.save()
    metrics = trainer.evaluate_best()
    run = trainer.run
    metrics.update(stopped=stopped, epochs=int(run.epoch), steps=int(run.step),
                   train_seconds=round(float(run.seconds), 1),
                   wall_seconds_this_run=round(time.perf_counter() - start, 1),
                   sample_rate=trainer.sample_rate,
                   parameters=int(sum(np.prod(v.shape) for v in trainer.model.trainable_variables)))
    speech_eval.plot_history(trainer.history, RunDir(cfg.model_dir).loss_curve,
                             f"LAS on {cfg.dataset}")
    path = reporting.write_results(cfg.model_dir, cfg, metrics)
    print(f"Wrote {path}", flush=True)
    return metrics


# Flags that define the trained network and how it attends and decodes: a trained run is
# evaluated and exported with its own values, whatever the flagfile says now.
MODEL_FLAGS = ("listener_units", "frame_stack", "pyramid_layers", "speller_units",
               "attention_dim", "char_embed_dim", "attention_window", "attention_window_back",
               "max_chars_per_frame")


def trained_model_flags(cfg):
    """`cfg` with the MODEL_FLAGS of the run in `cfg.model_dir` (its results.json), a flag the
    run predates taking its default; unchanged when the run has no results.json yet."""
    path = RunDir(cfg.model_dir).results
    if not os.path.exists(path):
        return cfg
    with open(path) as f:
        saved = json.load(f).get("flags", {})
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    values = {k: saved.get(k, defaults[k]) for k in MODEL_FLAGS}
    changed = {k: (getattr(cfg, k), v) for k, v in values.items() if getattr(cfg, k) != v}
    if changed:
        logging.warning("%s was trained with %s; using those values", cfg.model_dir,
                        ", ".join(f"--{k}={v} (not {now})" for k, (now, v) in changed.items()))
    return dataclasses.replace(cfg, **values)


def evaluate(cfg) -> dict:
    trainer = SpeechTrainer(trained_model_flags(cfg))
    metrics = trainer.evaluate_best()
    reporting.write_json(RunDir(cfg.model_dir).evaluation, metrics)
    return metrics
