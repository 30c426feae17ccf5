"""Training a language model on the BPTT stream: the language model's `Task` for the one
training loop (`tfawd.core.loop`), resumable at any checkpoint.

One `tf.function` step: forward over a window from the carried state, cross-entropy (+ AR and
TAR), gradients, global-norm clipping, optimizer update, new state stored (no gradient flows
across windows). Each epoch ends with validation and the schedule: with `--optimizer=sgd` the
learning rate is divided by `lr_decay` when validation does not improve; with `ntasgd` the
non-monotone trigger switches to averaged SGD, whose averaged weights are then the ones
validated and kept. The best weights are kept in `<model_dir>/best`; `finetune` restarts
averaging from them (AWD-LSTM's finetune.py).

Everything a run needs to continue exactly is in the checkpoint: weights, optimizer, the
loop's counters (epoch, window within the epoch, global step, best validation loss), the
learning rate, the carried LSTM state and the dropout RNG state (`LMState`). Re-running with
the same `--model_dir` resumes from it.
"""
import contextlib
import dataclasses
import os
import shutil
import time

import keras
import tensorflow as tf
from absl import logging

from pipelines import bptt
from pipelines.lm_corpus import Corpus, load_corpus
from pipelines.vocab import Vocabulary
from tfawd.core import distribute, files, reporting, runtime
from tfawd.core.checkpoints import check_saved_config, load_config, save_config
from tfawd.core.checkpoints import latest as latest_checkpoint
from tfawd.core.loop import FLOAT32_MAX, Loop, LoopConfig, Task
from tfawd.core.run_dir import RunDir
from tfawd.core.run_guard import ModelDirLock, RunError
from tfawd.lm.evaluation import Evaluator, split_metrics
from tfawd.lm.models import build_model, resolve_cutoffs, unstable_cluster_warning
from tfawd.nn.losses import (
    activation_regularization,
    clip_gradients,
    perplexity,
    temporal_activation_regularization,
)
from tfawd.nn.optimizers import NTASGD, SGD, nonmonotone_trigger

# Flags a checkpoint cannot be resumed under a different value of.
RESUME_FIXED = ("dataset", "model", "emsize", "nhid", "nlayers", "tie_weights", "batch_size",
                "softmax", "adaptive_cutoffs", "adaptive_div")


FIX_FLAGS = "restore it from a copy of the run folder (it records the flags the run must keep)"


def read_flags(model_dir: str) -> dict:
    """The run's flags.json ({} when it has none), or one line naming it when damaged."""
    path = RunDir(model_dir).flags
    if not os.path.exists(path):
        return {}
    saved = files.read_json(path, fix=FIX_FLAGS)
    if not isinstance(saved, dict):
        raise RunError(f"{path} is damaged (not a JSON object); {FIX_FLAGS}")
    return saved


def flag_mismatches(cfg, model_dir: str, keys=RESUME_FIXED) -> list:
    """'--k=saved (now v)' for each of `keys` that differs from the run's flags.json."""
    saved = read_flags(model_dir)
    return [f"--{k}={saved[k]} (now {getattr(cfg, k)})" for k in keys
            if k in saved and saved[k] != getattr(cfg, k)]


def check_resumable(cfg, model_dir: str) -> None:
    """Refuses to reuse a model_dir trained with other shapes (see `record_shapes`)."""
    diff = flag_mismatches(cfg, model_dir)
    if diff:
        raise RunError(f"{model_dir} holds a run made with {', '.join(diff)} (its "
                       f"{os.path.basename(RunDir(model_dir).flags)}); use those flags to "
                       f"resume it, or a new --model_dir")


def record_shapes(cfg, model_dir: str) -> None:
    """flags.json: the RESUME_FIXED flags as given, and the precision the run trains in (added
    to a run recorded before precisions were kept)."""
    path = RunDir(model_dir).flags
    saved = read_flags(model_dir)
    if "precision" in saved:
        return
    reporting.write_json(path, {**{k: getattr(cfg, k) for k in RESUME_FIXED}, **saved,
                                "precision": cfg.precision})


def keep_run_precision(cfg, model_dir: str):
    """A resumed run trains in the precision it started with (flags.json), whatever
    `--precision=auto` resolves to on this machine, with a one-line notice when they differ;
    an explicit other `--precision` changes it, also with a notice (and flags.json then records
    the new one). Never a silent change of numerics mid-run (issue 24)."""
    path = RunDir(model_dir).flags
    saved = read_flags(model_dir).get("precision")
    if saved is None or saved == cfg.precision:
        return cfg
    if cfg.precision_given in (None, "auto"):
        print(f"notice: {model_dir} trains in {saved} (recorded in {path}); keeping it although "
              f"--precision=auto means {cfg.precision} on this machine (pass --precision="
              f"{cfg.precision} to change)", flush=True)
        return dataclasses.replace(cfg, precision=saved)
    print(f"notice: {model_dir} trained in {saved} so far; continuing in {cfg.precision} as "
          f"--precision asks", flush=True)
    reporting.write_json(path, {**read_flags(model_dir), "precision": cfg.precision})
    return cfg


class LMState(tf.Module):
    """What the language model's checkpoint holds besides the loop's counters: the base
    learning rate (SGD's decay changes it) and the LSTM state carried across windows."""

    def __init__(self, model, batch_size, lr):
        super().__init__()
        self.lr = tf.Variable(lr, dtype=tf.float64, trainable=False)
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
    runtime.set_threads(cfg.inter_op_threads, cfg.intra_op_threads)


def make_optimizer(cfg):
    """sgd: Keras SGD (its weight decay equals coupled L2 for plain SGD); ntasgd: NT-ASGD."""
    if cfg.optimizer == "ntasgd":
        return NTASGD(learning_rate=cfg.lr, weight_decay=cfg.wdecay)
    return SGD(learning_rate=cfg.lr, weight_decay=cfg.wdecay or None)


def make_train_step(model, optimizer, state: LMState, cfg, strategy=None):
    """The compiled training step: (inputs [B, T], targets [B, T]) -> (loss, grad norm).

    loss = cross-entropy + AR + TAR (AWD-LSTM 4.6); the reported loss is the cross-entropy.
    With variable-length windows the learning rate is scaled by T / bptt (section 4.1) so
    that short windows do not take as large a step as full ones.

    Under a `tf.distribute` strategy each replica trains its own columns of the stream (and
    carries their LSTM state); its loss is its share of the global mean, the gradients are
    summed over the replicas, clipped by their global norm and applied by every replica
    alike; the new states of all columns are gathered into `state.hidden`, which stays the
    global batch's (so checkpoints do not depend on the number of replicas). One process:
    the same step without the collectives (`tfawd.core.distribute`).
    """
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    batch_size = state.hidden[0][0].shape[0]
    spec = tf.TensorSpec([batch_size, None], tf.int32)  # any window length: traced once
    if not optimizer.built:  # variables created inside the first call would force a retrace
        optimizer.build(model.trainable_variables)
    regularize = bool(cfg.alpha or cfg.beta)
    hidden = [v for layer in state.hidden for v in layer]
    widths = [v.shape[-1] for v in hidden]

    def replica_step(x, y):
        x, y = distribute.this_replica_rows(x), distribute.this_replica_rows(y)
        states = [tuple(distribute.this_replica_rows(v.read_value()) for v in layer)
                  for layer in state.hidden]
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
            if replicas > 1:  # this replica's share of the global batch's mean
                total, loss = total / replicas, loss / replicas
        grads = tape.gradient(total, model.trainable_variables)
        loss, *grads = distribute.all_reduce_sum([loss] + grads)
        grads, norm = clip_gradients(grads, cfg.clip)
        optimizer.apply(grads, model.trainable_variables)
        flat = [t for layer in new_states for t in layer]
        packed = distribute.gather_rows(tf.concat([tf.cast(t, tf.float32) for t in flat], -1))
        return loss, norm, packed

    @tf.function(input_signature=[spec, spec])
    def train_step(x, y):
        scale = tf.cast(tf.shape(x)[1], tf.float32) / cfg.bptt if cfg.variable_bptt else 1.0
        optimizer.learning_rate.assign(tf.cast(state.lr, tf.float32) * scale)
        loss, norm, packed = distribute.first_local(strategy,
                                                    strategy.run(replica_step, args=(x, y)))
        for v, value in zip(hidden, tf.split(packed, widths, axis=-1)):
            v.assign(tf.cast(value, v.dtype))
        return loss, norm
    return train_step


class LanguageModelTask(Task):
    """The language model for the loop: BPTT windows of the training stream (the LSTM state
    carried from one to the next), cross-entropy + AR/TAR steps, validation perplexity, and
    the schedule (SGD's lr decay or NT-ASGD's switch to averaging)."""

    unit = "tokens"

    def __init__(self, cfg, corpus: Corpus, model, finetuning: bool = False, strategy=None):
        self.cfg, self.corpus, self.model, self.finetuning = cfg, corpus, model, finetuning
        self.evaluator = Evaluator(model)
        strategy = strategy or tf.distribute.get_strategy()
        with strategy.scope():  # slots mirrored as the weights; the rest is bookkeeping
            self.optimizer = make_optimizer(cfg)
            self.optimizer.build(model.trainable_variables)
        self.lm = LMState(model, cfg.batch_size, cfg.lr)
        self.train_step = make_train_step(model, self.optimizer, self.lm, cfg, strategy)
        self._norms = []

    def state(self) -> dict:
        return {"lm": self.lm}

    def epoch_batches(self, epoch, start):
        cfg, ids = self.cfg, self.corpus.ids["train"]
        if start == 0:
            self.lm.reset_hidden()
        kw = dict(seed=cfg.seed, epoch=epoch, variable=cfg.variable_bptt, max_len=cfg.bptt_max_len)
        return (bptt.bptt_dataset(ids, cfg.batch_size, cfg.bptt, start_window=start, **kw),
                bptt.num_windows(len(ids), cfg.batch_size, cfg.bptt, **kw))

    def step(self, batch, step):
        x, y = batch
        loss, norm = self.train_step(x, y)  # the step has run: reading them costs nothing
        return {"loss": float(loss), "gradient norm": float(norm)}, y.shape[0] * y.shape[1]

    def log_entry(self, means, rate, epoch):
        loss, lr = means["loss"], float(self.lm.lr)
        tf.summary.scalar("loss", loss)
        tf.summary.scalar("perplexity", min(perplexity(loss), FLOAT32_MAX))  # a float32
        tf.summary.scalar("learning_rate", lr)
        tf.summary.scalar("grad_norm", means["gradient norm"])
        tf.summary.scalar("tokens_per_s", rate)
        return {"train_loss": loss, "train_ppl": perplexity(loss), "lr": lr,
                "tokens_per_s": rate}

    def validate(self) -> dict:
        cfg = self.cfg
        result = self.evaluator.evaluate(self.corpus.ids["valid"], cfg.eval_batch_size, cfg.bptt)
        return {**result, "score": result["nll"], "averaged": self.averaging}

    def validation_entry(self, result):
        tf.summary.scalar("loss", result["nll"])
        tf.summary.scalar("perplexity", min(result["ppl"], FLOAT32_MAX))
        return {"val_loss": result["score"], "val_ppl": result["ppl"], "lr": float(self.lm.lr),
                "averaged": result["averaged"]}

    def describe(self, result):
        return f"valid ppl {result['ppl']:.2f}{' (averaged)' if result['averaged'] else ''}"

    @property
    def averaging(self) -> bool:
        return isinstance(self.optimizer, NTASGD) and self.optimizer.is_averaging

    def averaged_weights(self):
        """Context in which the model holds NT-ASGD's averaged weights (if averaging)."""
        if isinstance(self.optimizer, NTASGD):
            return self.optimizer.averaged_weights()
        return contextlib.nullcontext()

    def end_epoch(self, result, improved, history, minutes_left=None, epoch=0):
        """NT-ASGD's switch to averaging, or SGD's lr decay; converged when fine-tuning's
        averaged checks meet the non-monotone condition. With `--average_last_min`, NT-ASGD
        also switches when less of the time budget is left than that: a 2-hour run is still
        improving every epoch when it stops, so the trigger alone would never average (one
        averaged epoch was worth ~11 perplexity points there; configs/awd_lstm_wt2_cpu.cfg).
        With `--average_after_epochs=N` it switches at the end of epoch N at the latest (a run
        of many sessions on machines of different speeds: configs/awd_lstm_wt2_long.cfg)."""
        cfg, averaged = self.cfg, result["averaged"]
        # The non-monotone rule compares with the earlier checks of the same kind (as the
        # reference, fine-tuning does not count the score of the weights it started from).
        earlier = [h["val_loss"] for h in history if "val_loss" in h
                   and h.get("averaged", False) == averaged and not h.get("initial")
                   and not h.get("partial")]
        triggered = nonmonotone_trigger(earlier, result["score"], cfg.nonmono)
        budget_ending = bool(cfg.average_last_min and minutes_left is not None
                             and minutes_left < cfg.average_last_min)
        scheduled = bool(cfg.average_after_epochs and epoch >= cfg.average_after_epochs)
        if cfg.optimizer == "ntasgd" and not averaged and (triggered or budget_ending
                                                            or scheduled):
            self.optimizer.switch_to_averaging()
            why = ("" if triggered else f" (epoch {epoch}: --average_after_epochs)" if scheduled
                   else f" ({max(minutes_left, 0):.1f} min of the budget left)")
            return "switched to averaged SGD" + why, False
        if cfg.optimizer == "sgd" and not improved and cfg.lr_decay > 1:
            self.lm.lr.assign(float(self.lm.lr) / cfg.lr_decay)
            return f"lr -> {float(self.lm.lr):g}", False
        return "", averaged and self.finetuning and triggered


class Trainer(Loop):
    """The loop of one language-model `model_dir`: data, model, task, checkpoints, logs."""

    def __init__(self, cfg, corpus: Corpus | None = None, init_from: str | None = None,
                 distribution: distribute.Distribution | None = None):
        """`init_from`: a weights checkpoint to fine-tune from when `model_dir` has none yet;
        the run then averages from its first step (the reference's finetune.py).
        `distribution`: the strategy the step runs under (default: one process)."""
        self.cfg = cfg
        dist = distribution or distribute.local()
        dist.check_batch(cfg.batch_size)
        check_resumable(cfg, cfg.model_dir)
        self.cfg = cfg = keep_run_precision(cfg, cfg.model_dir)
        self.cfg = cfg = dataclasses.replace(
            cfg, precision=dist.agreed_precision(cfg.precision, cfg.precision_given))
        keras.utils.set_random_seed(cfg.seed)
        run = RunDir(cfg.model_dir)
        vocab = Vocabulary.load(run.vocab) if os.path.exists(run.vocab) else None
        if corpus is None:
            corpus = load_corpus(cfg.dataset, cfg.data_dir, vocab=vocab, order=vocab_order(cfg))
        elif vocab is not None and vocab.words != corpus.vocab.words:
            raise RunError(f"{run.vocab} differs from the corpus vocabulary; "
                           f"use a new --model_dir")
        os.makedirs(cfg.model_dir, exist_ok=True)  # only once the data is there
        record_shapes(cfg, cfg.model_dir)  # as given (`auto`: resolved alike on resuming)
        if cfg.softmax == "adaptive":
            counts = corpus.word_counts()
            self.cfg = cfg = resolve_cutoffs(cfg, counts)
            logging.info("adaptive softmax: cut-offs %s", cfg.adaptive_cutoffs)
            warning = unstable_cluster_warning(cfg, counts)
            if warning:
                logging.warning(warning)
                print(f"warning: {warning}", flush=True)
        if vocab is None:  # a resumed run's vocabulary is already there, equal to the corpus's
            files.write_text(run.vocab, corpus.vocab.text())
        with dist.scope():  # the weights mirrored over the replicas
            try:
                model = build_model(cfg, len(corpus.vocab))
            except ValueError as e:  # flags the model cannot be built with
                raise RunError(str(e)) from None
        if os.path.exists(run.model):  # a resumed run: its saved architecture must be this one
            saved = load_config(run.model)["config"].get("vocab_size")
            if saved is not None and saved != len(corpus.vocab):
                raise RunError(f"{run.vocab} has {len(corpus.vocab)} words but {run.model} a "
                               f"vocabulary of {saved}: one of them is damaged or from another "
                               f"run; restore the run folder from a copy")
            check_saved_config(model, run.model)
        super().__init__(LanguageModelTask(cfg, corpus, model, init_from is not None,
                                           dist.strategy),
                         LoopConfig(cfg.model_dir, cfg.max_epochs, cfg.max_steps,
                                    cfg.time_budget_min, cfg.log_every, cfg.checkpoint_every,
                                    checkpoint_minutes=cfg.checkpoint_every_min,
                                    profile=cfg.profile_range(), precision=cfg.precision),
                         distribution=dist)
        if not os.path.exists(run.model):  # the architecture, with the weights
            save_config(model, run.model)
        self.corpus, self.model = corpus, model
        if self.resumed:
            logging.info("Resumed at epoch %d, window %d, step %d", int(self.state.epoch),
                         int(self.state.batch), int(self.state.step))
        if init_from and not self.manager.latest_checkpoint:
            self._start_finetuning(init_from)

    def _start_finetuning(self, init_from):
        """Loads the trained weights, restarts averaging, and scores them as the best so far,
        so fine-tuning only ever replaces them with better ones."""
        self.best.checkpoint.restore(init_from).assert_consumed()
        self.task.optimizer.switch_to_averaging()
        result = self.validation()
        self.state.best_score.assign(result["score"])
        self.best.save(checkpoint_number=0)
        self.history.append({"step": 0, "epoch": 0, "val_loss": result["nll"],
                             "val_ppl": result["ppl"], "lr": float(self.task.lm.lr),
                             "averaged": True, "initial": True, "score": result["score"],
                             "event": f"loaded {init_from}"})
        print(f"| fine-tuning {init_from} | valid ppl {result['ppl']:.2f}", flush=True)

    def train(self) -> str:
        """Trains until an epoch, step or time bound; returns why it stopped."""
        return self.run()

    def evaluate_best(self) -> dict:
        """Validation and test metrics of the best weights (the last ones if never validated)."""
        weights = self.restore_best()
        return {"weights": weights, **split_metrics(self.task.evaluator, self.corpus, self.cfg,
                                                    test=self.cfg.final_test)}


def train(cfg, corpus: Corpus | None = None,
          distribution: distribute.Distribution | None = None) -> dict:
    """Trains (or resumes), evaluates the best weights, writes results.json and the plot."""
    return _run(cfg, corpus, distribution=distribution)


def finetune(cfg, corpus: Corpus | None = None,
             distribution: distribute.Distribution | None = None) -> dict:
    """`--mode=finetune`: from the best weights in `model_dir`, averaged SGD again until the
    non-monotone condition fires on the averaged validation checks (the reference's
    finetune.py); runs in `<model_dir>/finetune`, keeps the better model there."""
    run = RunDir(cfg.model_dir)
    parent = latest_checkpoint(run.best)
    if not parent:
        raise RunError(f"no best weights in --model_dir={cfg.model_dir}; train first")
    child = dataclasses.replace(cfg, model_dir=run.finetune.path,
                                optimizer="ntasgd")
    return _run(child, corpus, init_from=parent, distribution=distribution,
                vocab_from=run.vocab)


def _run(cfg, corpus, init_from=None, distribution=None, vocab_from=None) -> dict:
    """Only the chief writes `cfg.model_dir`; other workers train in a scratch copy."""
    dist = distribution or distribute.local()
    with dist.run_folder(cfg.model_dir) as folder:
        cfg = dataclasses.replace(cfg, model_dir=folder)
        os.makedirs(folder, exist_ok=True)
        if vocab_from and os.path.exists(vocab_from) and not os.path.exists(RunDir(folder).vocab):
            shutil.copy(vocab_from, RunDir(folder).vocab)
        with ModelDirLock(folder):  # one trainer per run folder
            return _run_locked(cfg, corpus, init_from, dist)


def _run_locked(cfg, corpus, init_from, dist) -> dict:
    start = time.perf_counter()
    trainer = Trainer(cfg, corpus, init_from, dist)
    reporting.record_command(cfg.model_dir)
    stopped = trainer.train()
    if not dist.is_chief:  # the chief evaluates and reports
        return {"worker": dist.worker, "stopped": stopped, **trainer.summary()}
    metrics = trainer.evaluate_best()
    plot = reporting.plot_loss_curve(trainer.history, RunDir(cfg.model_dir).loss_curve,
                                     f"{cfg.model} on {cfg.dataset}")
    metrics.update({
        "stopped": stopped, **trainer.summary(),
        "wall_seconds_this_run": time.perf_counter() - start,
        "vocab_size": len(trainer.corpus.vocab), "loss_curve": os.path.basename(plot),
        "history": os.path.basename(RunDir(cfg.model_dir).history),
        "distribute": dist.describe(),
    })
    if cfg.softmax == "adaptive":  # as resolved from `auto`, or as given
        metrics["adaptive_cutoffs"] = trainer.cfg.adaptive_cutoffs
    # the precision it trained in (a resumed run keeps its own: keep_run_precision)
    cfg = dataclasses.replace(cfg, precision=trainer.cfg.precision)
    path = reporting.write_results(cfg.model_dir, cfg, metrics)
    test = f"test ppl {metrics['test_ppl']:.2f}" if "test_ppl" in metrics else "test not scored"
    print(f"| final ({metrics['weights']} weights) | valid ppl {metrics['val_ppl']:.2f} | "
          f"{test} | {path}", flush=True)
    return metrics

