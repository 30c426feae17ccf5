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

import tensorflow as tf
from absl import logging

from pipelines import bptt
from pipelines.lm_corpus import Corpus, load_corpus
from pipelines.vocab import Vocabulary
from tfawd.core import distribute, driver, files, reporting, run_flags, runtime
from tfawd.core.checkpoints import latest as latest_checkpoint
from tfawd.core.checkpoints import load_config
from tfawd.core.driver import TrainingTask
from tfawd.core.loop import FLOAT32_MAX, Loop
from tfawd.core.run_dir import RunDir
from tfawd.core.run_guard import RunError
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


class LanguageModelTask(TrainingTask):
    """The language model for the run driver: the corpus and vocabulary (checked against a
    resumed run's), the model and NT-ASGD / SGD, BPTT windows of the training stream (the LSTM
    state carried from one to the next), cross-entropy + AR/TAR steps, validation perplexity,
    the schedule (SGD's lr decay or NT-ASGD's switch to averaging) and the final evaluation of
    the best weights (valid at --eval_batch_size, test at --test_batch_size)."""

    unit = "tokens"

    def __init__(self, cfg, distribution: distribute.Distribution, corpus: Corpus | None = None,
                 init_from: str | None = None):
        """`init_from`: a weights checkpoint to fine-tune from when `model_dir` has none yet;
        the run then averages from its first step (the reference's finetune.py)."""
        run_flags.check_resumable(cfg, cfg.model_dir, RESUME_FIXED)
        cfg = run_flags.keep_run_precision(cfg, cfg.model_dir)
        cfg = dataclasses.replace(
            cfg, precision=distribution.agreed_precision(cfg.precision, cfg.precision_given))
        self.given_cfg = cfg  # as recorded in results.json (cut-offs as given, e.g. `auto`)
        run = RunDir(cfg.model_dir)
        vocab = Vocabulary.load(run.vocab) if files.exists(run.vocab) else None
        if corpus is None:
            corpus = load_corpus(cfg.dataset, cfg.data_dir, vocab=vocab, order=vocab_order(cfg))
        elif vocab is not None and vocab.words != corpus.vocab.words:
            raise RunError(f"{run.vocab} differs from the corpus vocabulary; "
                           f"use a new --model_dir")
        files.makedirs(cfg.model_dir)  # only once the data is there
        # as given (`auto`: resolved alike on resuming)
        run_flags.record_shapes(cfg, cfg.model_dir, RESUME_FIXED)
        if cfg.softmax == "adaptive":
            counts = corpus.word_counts()
            cfg = resolve_cutoffs(cfg, counts)
            logging.info("adaptive softmax: cut-offs %s", cfg.adaptive_cutoffs)
            warning = unstable_cluster_warning(cfg, counts)
            if warning:
                logging.warning(warning)
                print(f"warning: {warning}", flush=True)
        if vocab is None:  # a resumed run's vocabulary is already there, equal to the corpus's
            files.write_text(run.vocab, corpus.vocab.text())
        with distribution.scope():  # the weights mirrored over the replicas
            try:
                model = build_model(cfg, len(corpus.vocab))
            except ValueError as e:  # flags the model cannot be built with
                raise RunError(str(e)) from None
        if files.exists(run.model):  # a resumed run: its saved vocabulary size is this one
            saved = load_config(run.model)["config"].get("vocab_size")
            if saved is not None and saved != len(corpus.vocab):
                raise RunError(f"{run.vocab} has {len(corpus.vocab)} words but {run.model} a "
                               f"vocabulary of {saved}: one of them is damaged or from another "
                               f"run; restore the run folder from a copy")
        self.cfg, self.corpus, self.model = cfg, corpus, model
        self.init_from, self.finetuning = init_from, init_from is not None
        self.evaluator = Evaluator(model)
        strategy = distribution.strategy
        with strategy.scope():  # slots mirrored as the weights; the rest is bookkeeping
            self.optimizer = make_optimizer(cfg)
            self.optimizer.build(model.trainable_variables)
        self.lm = LMState(model, cfg.batch_size, cfg.lr)
        self.train_step = make_train_step(model, self.optimizer, self.lm, cfg, strategy)

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


    def started(self, run):
        """Fine-tuning's start (a run with `init_from` and no checkpoint of its own yet): the
        trained weights loaded, averaging restarted, and their score kept as the best so far,
        so fine-tuning only ever replaces them with better ones."""
        if not self.init_from or run.manager.latest_checkpoint:
            return
        run.best.checkpoint.restore(self.init_from).assert_consumed()
        self.optimizer.switch_to_averaging()
        result = run.validation()
        run.state.best_score.assign(result["score"])
        run.best.save(checkpoint_number=0)
        run.history.append({"step": 0, "epoch": 0, "val_loss": result["nll"],
                            "val_ppl": result["ppl"], "lr": float(self.lm.lr),
                            "averaged": True, "initial": True, "score": result["score"],
                            "event": f"loaded {self.init_from}"})
        print(f"| fine-tuning {self.init_from} | valid ppl {result['ppl']:.2f}", flush=True)

    def final_evaluation(self, run) -> dict:
        """Validation and test metrics of the best weights (the last ones if never validated)."""
        weights = run.restore_best()
        return {"weights": weights, **split_metrics(self.evaluator, self.corpus, self.cfg,
                                                    test=self.cfg.final_test)}

    def report(self, run, metrics):
        cfg = self.cfg
        plot = reporting.plot_loss_curve(run.history, RunDir(cfg.model_dir).loss_curve,
                                         f"{cfg.model} on {cfg.dataset}")
        extra = {"vocab_size": len(self.corpus.vocab), "loss_curve": os.path.basename(plot),
                 "history": os.path.basename(RunDir(cfg.model_dir).history)}
        if cfg.softmax == "adaptive":  # as resolved from `auto`, or as given
            extra["adaptive_cutoffs"] = cfg.adaptive_cutoffs
        # flags as given, with the precision it trained in (a resumed run keeps its own)
        recorded = dataclasses.replace(self.given_cfg, model_dir=cfg.model_dir)
        test = (f"test ppl {metrics['test_ppl']:.2f}" if "test_ppl" in metrics
                else "test not scored")
        return recorded, extra, (f"({metrics['weights']} weights)",
                                 f"valid ppl {metrics['val_ppl']:.2f}", test)


def open_run(cfg, corpus: Corpus | None = None, init_from: str | None = None,
             distribution: distribute.Distribution | None = None) -> Loop:
    """The language-model run of `cfg.model_dir`, new or resumed, ready to `run()`."""
    return driver.start(LanguageModelTask, cfg, distribution, corpus=corpus,
                        init_from=init_from)


def train(cfg, corpus: Corpus | None = None,
          distribution: distribute.Distribution | None = None) -> dict:
    """Trains (or resumes), evaluates the best weights, writes results.json and the plot."""
    return driver.train(LanguageModelTask, cfg, distribution, corpus=corpus)


def finetune(cfg, corpus: Corpus | None = None,
             distribution: distribute.Distribution | None = None) -> dict:
    """`--mode=finetune`: from the best weights in `model_dir`, averaged SGD again until the
    non-monotone condition fires on the averaged validation checks (the reference's
    finetune.py); runs in `<model_dir>/finetune`, keeps the better model there."""
    run = RunDir(cfg.model_dir)
    parent = latest_checkpoint(run.best)
    if not parent:
        raise RunError(f"no best weights in --model_dir={cfg.model_dir}; train first")
    child = dataclasses.replace(cfg, model_dir=run.finetune.path, optimizer="ntasgd")

    def copy_vocab(folder):
        if files.exists(run.vocab) and not files.exists(RunDir(folder).vocab):
            files.copy(run.vocab, RunDir(folder).vocab)
    return driver.train(LanguageModelTask, child, distribution, prepare_folder=copy_vocab,
                        corpus=corpus, init_from=parent)
