"""Training a language model on the BPTT stream, resumable at any checkpoint.

One `tf.function` step: forward over a window from the carried state, cross-entropy (+ AR and
TAR), gradients, global-norm clipping, optimizer update, new state stored (no gradient flows
across windows). Each epoch ends with validation and the schedule: with `--optimizer=sgd` the
learning rate is divided by `lr_decay` when validation does not improve; with `ntasgd` the
non-monotone trigger switches to averaged SGD, whose averaged weights are then the ones
validated and kept. The best weights are kept in `<model_dir>/best`; `finetune` restarts
averaging from them (AWD-LSTM's finetune.py).

Everything a run needs to continue exactly is in the checkpoint: weights, optimizer, epoch,
window within the epoch, global step, learning rate, best validation loss, the carried LSTM
state and the dropout RNG state. Re-running with the same `--model_dir` resumes from it.
"""
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from pipelines import bptt
from pipelines.lm_corpus import Corpus, load_corpus
from pipelines.vocab import Vocabulary
from tfawd import reporting
from tfawd.checkpoints import RunCheckpoints
from tfawd.evaluation import Evaluator, split_metrics
from tfawd.losses import (
    activation_regularization,
    clip_gradients,
    perplexity,
    temporal_activation_regularization,
)
from tfawd.models import build_model, save_config
from tfawd.optimizers import NTASGD, nonmonotone_trigger
from tfawd.reporting import progress_bar
from tfawd.run_dir import RunDir
from tfawd.run_guard import ModelDirLock, RunError, StopSignals, check_finite  # noqa: F401

FLOAT32_MAX = float(np.finfo(np.float32).max)

# Flags a checkpoint cannot be resumed under a different value of.
RESUME_FIXED = ("dataset", "model", "emsize", "nhid", "nlayers", "tie_weights", "batch_size",
                "softmax", "adaptive_cutoffs", "adaptive_div")


def flag_mismatches(cfg, model_dir: str, keys=RESUME_FIXED) -> list:
    """'--k=saved (now v)' for each of `keys` that differs from the run's flags.json."""
    path = RunDir(model_dir).flags
    if not os.path.exists(path):
        return []
    with open(path) as f:
        saved = json.load(f)
    return [f"--{k}={saved[k]} (now {getattr(cfg, k)})" for k in keys
            if k in saved and saved[k] != getattr(cfg, k)]


def check_resumable(cfg, model_dir: str) -> None:
    """Refuses to reuse a model_dir trained with other shapes (see `record_shapes`)."""
    diff = flag_mismatches(cfg, model_dir)
    if diff:
        raise RunError(f"{model_dir} holds a run made with {', '.join(diff)}; "
                       f"use those flags to resume it, or a new --model_dir")


def record_shapes(cfg, model_dir: str) -> None:
    path = RunDir(model_dir).flags
    if not os.path.exists(path):
        reporting.write_json(path, {k: getattr(cfg, k) for k in RESUME_FIXED})


class RunState(tf.Module):
    """Counters and carried tensors that a checkpoint must hold besides weights/optimizer."""

    def __init__(self, model, batch_size, lr):
        super().__init__()
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.window = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.lr = tf.Variable(lr, dtype=tf.float64, trainable=False)
        self.best_val_nll = tf.Variable(np.inf, dtype=tf.float64, trainable=False)
        self.train_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.train_tokens = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.hidden = [tuple(tf.Variable(t, trainable=False) for t in layer)
                       for layer in model.initial_state(batch_size)]

    def reset_hidden(self):
        for layer in self.hidden:
            for v in layer:
                v.assign(tf.zeros_like(v))


def vocab_order(cfg) -> str:
    """Word ids by frequency for an adaptive softmax (its clusters are id ranges), else in
    first-appearance order as the reference."""
    return "frequency" if cfg.softmax == "adaptive" else "first"


def configure_runtime(cfg) -> None:
    """TensorFlow's thread pools as `cfg` asks (before the first op runs)."""
    if cfg.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(cfg.inter_op_threads)
    if cfg.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(cfg.intra_op_threads)


def make_optimizer(cfg):
    """sgd: Keras SGD (its weight decay equals coupled L2 for plain SGD); ntasgd: NT-ASGD."""
    if cfg.optimizer == "ntasgd":
        return NTASGD(learning_rate=cfg.lr, weight_decay=cfg.wdecay)
    return keras.optimizers.SGD(learning_rate=cfg.lr, weight_decay=cfg.wdecay or None)


def make_train_step(model, optimizer, state: RunState, cfg):
    """The compiled training step: (inputs [B, T], targets [B, T]) -> (loss, grad norm).

    loss = cross-entropy + AR + TAR (AWD-LSTM 4.6); the reported loss is the cross-entropy.
    With variable-length windows the learning rate is scaled by T / bptt (section 4.1) so
    that short windows do not take as large a step as full ones.
    """
    batch_size = state.hidden[0][0].shape[0]
    spec = tf.TensorSpec([batch_size, None], tf.int32)  # any window length: traced once
    if not optimizer.built:  # variables created inside the first call would force a retrace
        optimizer.build(model.trainable_variables)
    regularize = bool(cfg.alpha or cfg.beta)

    @tf.function(input_signature=[spec, spec])
    def train_step(x, y):
        scale = tf.cast(tf.shape(x)[1], tf.float32) / cfg.bptt if cfg.variable_bptt else 1.0
        optimizer.learning_rate.assign(tf.cast(state.lr, tf.float32) * scale)
        states = [tuple(v.read_value() for v in layer) for layer in state.hidden]
        with tf.GradientTape() as tape:
            if regularize:
                nll, new_states, acts = model(x, states, training=True, targets=y,
                                              return_activations=True)
            else:
                nll, new_states = model(x, states, training=True, targets=y)
            loss = tf.reduce_mean(nll)
            total = loss
            if cfg.alpha:
                total += activation_regularization(acts["dropped_last"], cfg.alpha)
            if cfg.beta:
                total += temporal_activation_regularization(acts["raw_last"], cfg.beta)
        grads = tape.gradient(total, model.trainable_variables)
        grads, norm = clip_gradients(grads, cfg.clip)
        optimizer.apply(grads, model.trainable_variables)
        for layer_vars, layer_values in zip(state.hidden, new_states):
            for v, value in zip(layer_vars, layer_values):
                v.assign(value)
        return loss, norm

    return train_step


class Trainer:
    """Owns the model, optimizer, checkpoints and logs of one `model_dir`."""

    def __init__(self, cfg, corpus: Corpus | None = None, init_from: str | None = None):
        """`init_from`: a weights checkpoint to fine-tune from when `model_dir` has none yet;
        the run then averages from its first step (the reference's finetune.py)."""
        self.cfg = cfg
        self.finetuning = init_from is not None
        check_resumable(cfg, cfg.model_dir)
        keras.utils.set_random_seed(cfg.seed)
        vocab_path = RunDir(cfg.model_dir).vocab
        vocab = Vocabulary.load(vocab_path) if os.path.exists(vocab_path) else None
        if corpus is None:
            corpus = load_corpus(cfg.dataset, cfg.data_dir, vocab=vocab, order=vocab_order(cfg))
        elif vocab is not None and vocab.words != corpus.vocab.words:
            raise RunError(f"{vocab_path} differs from the corpus vocabulary; "
                           f"use a new --model_dir")
        os.makedirs(cfg.model_dir, exist_ok=True)  # only once the data is there
        record_shapes(cfg, cfg.model_dir)
        corpus.vocab.save(vocab_path)
        self.corpus = corpus
        try:
            self.model = build_model(cfg, len(corpus.vocab))
        except ValueError as e:  # flags the model cannot be built with
            raise RunError(str(e)) from None
        if not os.path.exists(RunDir(cfg.model_dir).model):  # the architecture, with the weights
            save_config(self.model, RunDir(cfg.model_dir).model)
        self.evaluator = Evaluator(self.model)
        self.optimizer = make_optimizer(cfg)
        self.optimizer.build(self.model.trainable_variables)
        self.state = RunState(self.model, cfg.batch_size, cfg.lr)
        ckpts = RunCheckpoints(self.model, cfg.model_dir, optimizer=self.optimizer, run=self.state)
        self.manager, self.best = ckpts.manager, ckpts.best
        self.history_path, self.history = ckpts.history_path, ckpts.history
        if ckpts.resumed:
            logging.info("Resumed at epoch %d, window %d, step %d", int(self.state.epoch),
                         int(self.state.window), int(self.state.step))
        if init_from and not self.manager.latest_checkpoint:
            self._start_finetuning(init_from)
        self.train_step = make_train_step(self.model, self.optimizer, self.state, cfg)
        self.tb_dir = RunDir(cfg.model_dir).tb
        self.writers = {k: tf.summary.create_file_writer(os.path.join(self.tb_dir, k))
                        for k in ("train", "valid")}

    def _start_finetuning(self, init_from):
        """Loads the trained weights, restarts averaging, and scores them as the best so far,
        so fine-tuning only ever replaces them with better ones."""
        self.best.checkpoint.restore(init_from).assert_consumed()
        self.optimizer.switch_to_averaging()
        result = self.validate()
        self.state.best_val_nll.assign(result["nll"])
        self.best.save(checkpoint_number=0)
        self.history.append({"step": 0, "epoch": 0, "val_loss": result["nll"],
                             "val_ppl": result["ppl"], "lr": float(self.state.lr),
                             "averaged": True, "initial": True, "event": f"loaded {init_from}"})
        print(f"| fine-tuning {init_from} | valid ppl {result['ppl']:.2f}", flush=True)

    # -- checkpoints ---------------------------------------------------------------------
    def save(self):
        reporting.write_json(self.history_path, self.history)
        self.manager.save(checkpoint_number=int(self.state.step))

    # -- the loop ------------------------------------------------------------------------
    def train(self) -> str:
        """Trains until an epoch, step or time bound; returns why it stopped."""
        cfg, st = self.cfg, self.state
        start = time.perf_counter()
        profile = cfg.profile_range()
        profiling = False
        signals = StopSignals()
        try:
            signals.__enter__()
            while int(st.epoch) < cfg.max_epochs:
                if cfg.max_steps and int(st.step) >= cfg.max_steps:
                    return "max_steps"
                epoch = int(st.epoch)
                if int(st.window) == 0:
                    st.reset_hidden()
                ids = self.corpus.ids["train"]
                kw = dict(seed=cfg.seed, epoch=epoch, variable=cfg.variable_bptt,
                          max_len=cfg.bptt_max_len)
                total = bptt.num_windows(len(ids), cfg.batch_size, cfg.bptt, **kw)
                data = bptt.bptt_dataset(ids, cfg.batch_size, cfg.bptt,
                                         start_window=int(st.window), **kw)
                print(f"Epoch {epoch + 1}/{cfg.max_epochs}", flush=True)
                bar = progress_bar(total, int(st.window))
                losses, norms, tokens, t0 = [], [], 0, time.perf_counter()
                for x, y in data:
                    step = int(st.step)
                    if profile and step == profile[0]:
                        tf.profiler.experimental.start(self.tb_dir)
                        profiling = True
                    loss, norm = self.train_step(x, y)
                    losses.append(float(loss))  # the step has run: reading it costs nothing
                    norms.append(float(norm))
                    check_finite(step + 1, {"loss": losses[-1], "gradient norm": norms[-1]},
                                 self.manager.latest_checkpoint)
                    tokens += y.shape[0] * y.shape[1]
                    st.step.assign_add(1)
                    st.window.assign_add(1)
                    step += 1
                    if profiling and step >= profile[1]:
                        tf.profiler.experimental.stop()
                        profiling = False
                    stop = signals.received or self._stop_reason(start)
                    if step % cfg.log_every == 0 or stop or int(st.window) == total:
                        self._log(losses, norms, tokens, time.perf_counter() - t0, bar)
                        losses, norms, tokens, t0 = [], [], 0, time.perf_counter()
                    if signals.received:  # SIGTERM / Ctrl-C: this step's checkpoint, then exit
                        self.save()
                        raise signals.interrupted(step, self.manager.latest_checkpoint)
                    if stop:
                        self._keep_partial_epoch(stop)
                        self.save()
                        return stop
                    if step % cfg.checkpoint_every == 0:
                        self.save()
                if self._end_epoch():
                    return "converged"
            return "max_epochs"
        finally:
            signals.__exit__()
            if profiling:
                tf.profiler.experimental.stop()

    def _stop_reason(self, start):
        cfg = self.cfg
        if cfg.max_steps and int(self.state.step) >= cfg.max_steps:
            return "max_steps"
        if cfg.time_budget_min and time.perf_counter() - start > 60 * cfg.time_budget_min:
            return "time_budget"
        return None

    def _log(self, losses, norms, tokens, seconds, bar):
        st, step = self.state, int(self.state.step)
        st.train_seconds.assign_add(seconds)
        st.train_tokens.assign_add(tokens)
        loss = float(np.mean(losses))
        rate = tokens / max(seconds, 1e-9)
        self.history.append({"step": step, "epoch": int(st.epoch), "train_loss": loss,
                             "train_ppl": perplexity(loss), "lr": float(st.lr),
                             "tokens_per_s": rate})
        with self.writers["train"].as_default(step=step):
            tf.summary.scalar("loss", loss)
            tf.summary.scalar("perplexity", min(perplexity(loss), FLOAT32_MAX))  # a float32
            tf.summary.scalar("learning_rate", float(st.lr))
            tf.summary.scalar("grad_norm", float(np.mean(norms)))
            tf.summary.scalar("tokens_per_s", rate)
        bar.update(int(st.window), [("loss", loss), ("ppl", perplexity(loss)), ("tok/s", rate),
                                    ("lr", float(st.lr))])


    def validate(self) -> dict:
        cfg = self.cfg
        return self.evaluator.evaluate(self.corpus.ids["valid"], cfg.eval_batch_size, cfg.bptt)

    @property
    def averaging(self) -> bool:
        return isinstance(self.optimizer, NTASGD) and self.optimizer.is_averaging

    def averaged_weights(self):
        """Context in which the model holds NT-ASGD's averaged weights (if averaging)."""
        if isinstance(self.optimizer, NTASGD):
            return self.optimizer.averaged_weights()
        return contextlib.nullcontext()

    def _keep_partial_epoch(self, stop: str) -> None:
        """A run stopped inside an epoch (time budget, max_steps) validates the weights it has
        (averaged once NT-ASGD averages) and keeps them as the best when they beat it, so the
        final evaluation never falls back to an older epoch's weights. The schedule does not
        see this check: `best_val_nll` and the non-monotone trigger count epoch ends only, so
        a resumed run continues exactly as one that was never stopped."""
        st = self.state
        if int(st.window) == 0:
            return  # stopped at an epoch boundary: that epoch was validated
        with self.averaged_weights():
            result = self.validate()
            best = min([float(st.best_val_nll)] + [h["val_loss"] for h in self.history
                                                   if h.get("partial") and h.get("kept")])
            kept = result["nll"] < best
            if kept:
                self.best.save(checkpoint_number=int(st.step))
        self.history.append({"step": int(st.step), "epoch": int(st.epoch) + 1,
                             "val_loss": result["nll"],
                             "val_ppl": result["ppl"], "lr": float(st.lr),
                             "averaged": self.averaging, "partial": True, "kept": kept,
                             "event": f"{stop} inside the epoch" + (": best so far" if kept
                                                                    else "")})
        print(f"| {stop} at step {int(st.step)}, inside epoch {int(st.epoch) + 1} | valid ppl "
              f"{result['ppl']:.2f} | {'kept as the best' if kept else 'not better'}",
              flush=True)

    def _end_epoch(self) -> bool:
        """Validates (averaged weights once NT-ASGD averages), keeps the best weights, and
        applies the schedule: NT-ASGD's switch, or SGD's lr decay. True when fine-tuning has
        converged (the non-monotone condition on the averaged checks)."""
        st, cfg = self.state, self.cfg
        averaged = self.averaging
        # The non-monotone rule compares with the earlier checks of the same kind (as the
        # reference, fine-tuning does not count the score of the weights it started from).
        earlier = [h["val_loss"] for h in self.history if "val_loss" in h
                   and h.get("averaged", False) == averaged and not h.get("initial")
                   and not h.get("partial")]
        with self.averaged_weights():
            result = self.validate()
            improved = result["nll"] < float(st.best_val_nll)
            if improved:
                st.best_val_nll.assign(result["nll"])
                self.best.save(checkpoint_number=int(st.step))
        step, event = int(st.step), "best so far" if improved else ""
        triggered = nonmonotone_trigger(earlier, result["nll"], cfg.nonmono)
        converged = averaged and self.finetuning and triggered
        if cfg.optimizer == "ntasgd" and not averaged and triggered:
            self.optimizer.switch_to_averaging()
            event = "switched to averaged SGD"
        elif cfg.optimizer == "sgd" and not improved and cfg.lr_decay > 1:
            st.lr.assign(float(st.lr) / cfg.lr_decay)
            event = f"lr -> {float(st.lr):g}"
        with self.writers["valid"].as_default(step=step):
            tf.summary.scalar("loss", result["nll"])
            tf.summary.scalar("perplexity", min(result["ppl"], FLOAT32_MAX))
        self.history.append({"step": step, "epoch": int(st.epoch) + 1, "val_loss": result["nll"],
                             "val_ppl": result["ppl"], "lr": float(st.lr), "averaged": averaged,
                             "event": event})
        print(f"| end of epoch {int(st.epoch) + 1} | valid ppl {result['ppl']:.2f}"
              f"{' (averaged)' if averaged else ''} | {event or 'no improvement'} | "
              f"{result['seconds']:.0f}s", flush=True)
        st.epoch.assign_add(1)
        st.window.assign(0)
        self.save()
        return converged

    # -- final evaluation ----------------------------------------------------------------
    def evaluate_best(self) -> dict:
        """Validation and test metrics of the best weights (the last ones if never validated)."""
        cfg = self.cfg
        weights = "last"
        if self.best.latest_checkpoint:
            self.best.checkpoint.restore(self.best.latest_checkpoint).assert_consumed()
            weights = "best"
        return {"weights": weights,
                **split_metrics(self.evaluator, self.corpus, cfg, test=cfg.final_test)}


def train(cfg, corpus: Corpus | None = None) -> dict:
    """Trains (or resumes), evaluates the best weights, writes results.json and the plot."""
    return _run(cfg, corpus)


def finetune(cfg, corpus: Corpus | None = None) -> dict:
    """`--mode=finetune`: from the best weights in `model_dir`, averaged SGD again until the
    non-monotone condition fires on the averaged validation checks (the reference's
    finetune.py); runs in `<model_dir>/finetune`, keeps the better model there."""
    run = RunDir(cfg.model_dir)
    parent = tf.train.latest_checkpoint(run.best)
    if not parent:
        raise RunError(f"no best weights in --model_dir={cfg.model_dir}; train first")
    child = dataclasses.replace(cfg, model_dir=run.finetune.path,
                                optimizer="ntasgd")
    os.makedirs(child.model_dir, exist_ok=True)
    if os.path.exists(run.vocab):
        shutil.copy(run.vocab, run.finetune.vocab)
    return _run(child, corpus, init_from=parent)


def _run(cfg, corpus, init_from=None) -> dict:
    with ModelDirLock(cfg.model_dir):  # one trainer per run folder
        return _run_locked(cfg, corpus, init_from)


def _run_locked(cfg, corpus, init_from) -> dict:
    start = time.perf_counter()
    trainer = Trainer(cfg, corpus, init_from)
    reporting.record_command(cfg.model_dir)
    stopped = trainer.train()
    metrics = trainer.evaluate_best()
    st = trainer.state
    plot = reporting.plot_loss_curve(trainer.history, RunDir(cfg.model_dir).loss_curve,
                                     f"{cfg.model} on {cfg.dataset}")
    metrics.update({
        "stopped": stopped, "epochs_completed": int(st.epoch), "steps": int(st.step),
        "train_tokens": int(st.train_tokens), "train_seconds": float(st.train_seconds),
        "train_tokens_per_s": int(st.train_tokens) / max(float(st.train_seconds), 1e-9),
        "wall_seconds_this_run": time.perf_counter() - start,
        "num_parameters": int(sum(np.prod(v.shape) for v in trainer.model.trainable_variables)),
        "vocab_size": len(trainer.corpus.vocab), "loss_curve": os.path.basename(plot),
        "history": os.path.basename(RunDir(cfg.model_dir).history),
    })
    path = reporting.write_results(cfg.model_dir, cfg, metrics)
    test = f"test ppl {metrics['test_ppl']:.2f}" if "test_ppl" in metrics else "test not scored"
    print(f"| final ({metrics['weights']} weights) | valid ppl {metrics['val_ppl']:.2f} | "
          f"{test} | {path}", flush=True)
    return metrics

