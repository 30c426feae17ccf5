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

import tensorflow as tf

from pipelines import speech_features
from pipelines.speech_features import CharVocab
from tfawd.core import distribute, driver
from tfawd.core.driver import TrainingTask
from tfawd.core.loop import Loop
from tfawd.core.run_dir import RunDir
from tfawd.nn.optimizers import Adam
from tfawd.speech import evaluation as speech_eval
from tfawd.speech.ctc import ctc_loss
from tfawd.speech.data import band_edges, featurized
from tfawd.speech.evaluation import N_ATTENTION, eval_batches, evaluate_splits, transcribe
from tfawd.speech.inference import batch_spec, build_las, make_decoder
from tfawd.speech.las import encoder_frames, guided_attention_loss


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


def make_train_step(model, optimizer, cfg, strategy=None):
    """(features, frames, labels, teacher forcing rate, seed [2]) -> (cross-entropy, guided
    attention loss before its weight, CTC loss per character (0 without --ctc_weight));
    minimises (1 - w) cross-entropy + w CTC (w = --ctc_weight) + --guided_attention times the
    guided loss; traced once. Under a `tf.distribute` strategy each replica decodes its rows
    of the global batch and weighs its losses by its share of the batch's characters (and
    attention cells), so the summed gradient is the global batch's (`tfawd.core.distribute`).
    """
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    listener = model.listener

    def sizes(frames, labels):
        """(label lengths, encoder frames, characters, attention cells) of a batch."""
        chars = tf.reduce_sum(tf.cast(labels > 0, tf.int32), axis=1)
        enc = encoder_frames(frames, listener.frame_stack, listener.pyramid_layers)
        return (chars, enc, tf.cast(tf.reduce_sum(chars), tf.float32),
                tf.reduce_sum(tf.cast(chars, tf.float32) * tf.cast(enc, tf.float32)))

    @tf.function(autograph=True)  # the decoder's loop needs AutoGraph; strategy.run
    def replica_step(features, frames, labels, rate, seed):  # would not convert it
        _, _, all_chars, all_cells = sizes(frames, labels)
        features, frames, labels = (distribute.this_replica_rows(t)
                                    for t in (features, frames, labels))
        chars, enc, my_chars, my_cells = sizes(frames, labels)
        with tf.GradientTape() as tape:
            out = model.teacher_forced(features, frames, labels, rate, seed, training=True,
                                       with_ctc=bool(cfg.ctc_weight))
            logits, attention = out[:2]
            loss = sequence_loss(logits, labels, cfg.label_smoothing)
            guided = guided_attention_loss(attention, chars, enc, cfg.guided_attention_width)
            # CTC's NLL per character of the global batch (0 without a CTC head)
            ctc = (tf.reduce_sum(ctc_loss(out[2], out[3], labels)) / tf.maximum(all_chars, 1.0)
                   if cfg.ctc_weight else tf.constant(0.0))
            if replicas > 1:  # this replica's share of the global batch's means
                loss = loss * my_chars / all_chars
                guided = guided * my_cells / tf.maximum(all_cells, 1.0)
            total = (1 - cfg.ctc_weight) * loss + cfg.ctc_weight * ctc
            if cfg.guided_attention:
                total += cfg.guided_attention * guided
        grads = tape.gradient(total, model.trainable_variables)
        loss, guided, ctc, *grads = distribute.all_reduce_sum([loss, guided, ctc] + grads)
        optimizer.apply(grads, model.trainable_variables)
        return loss, guided, ctc

    @tf.function(input_signature=batch_spec(model.feature_dim) + (tf.TensorSpec([], tf.float32),
                                               tf.TensorSpec([2], tf.int32)))
    def step(features, frames, labels, rate, seed):
        return distribute.first_local(strategy, strategy.run(
            replica_step, args=(features, frames, labels, rate, seed)))
    return step


class SpeechTask(TrainingTask):
    """The recogniser for the run driver: featurized data, the model and Adam, shuffled
    (optionally SpecAugmented) batches per epoch, teacher-forced steps at the epoch's
    teacher-forcing rate and learning rate, greedy decoding of the validation split scored by
    CER (the best is the lowest), and every evaluation split decoded at the end."""

    unit = "frames"

    def __init__(self, cfg, distribution: distribute.Distribution):
        self.cfg, self.vocab = cfg, CharVocab()
        self.data, self.sample_rate, stats = featurized(cfg, self.vocab)
        self.warp = None
        if cfg.vtlp:
            edges = band_edges(cfg, self.sample_rate)
            if edges is None:
                raise ValueError(f"--vtlp warps mel bands; --dataset={cfg.dataset} "
                                 f"--features={cfg.features} has none it knows the filters "
                                 f"of: use --vtlp=0")
            self.warp = (cfg.vtlp, edges)
        with distribution.scope():  # the weights mirrored over the replicas
            self.model = model = build_las(cfg, self.vocab)
        if stats is not None:  # global CMVN: saved with the weights (a resume restores them)
            model.set_feature_stats(*stats)
        strategy = distribution.strategy
        with strategy.scope():  # slots as the weights
            self.optimizer = Adam(cfg.lr, global_clipnorm=cfg.clip or None,
                                  use_ema=cfg.ema_decay > 0, ema_momentum=cfg.ema_decay or 0.99)
            self.optimizer.build(model.trainable_variables)
        self.train_step = make_train_step(model, self.optimizer, cfg, strategy)
        self.greedy = make_decoder(model, cfg.max_decode_len)
        self.rate = teacher_forcing_rate(cfg, 0)

    def epoch_batches(self, epoch, start):
        cfg = self.cfg
        self.rate = teacher_forcing_rate(cfg, epoch)
        self.optimizer.learning_rate.assign(cfg.lr * cfg.lr_epoch_decay ** epoch)
        seed = cfg.seed * 1000 + epoch
        augment = cfg.spec_augment or self.warp is not None
        batches = speech_features.batches(self.data["train"], cfg.batch_size, shuffle_seed=seed,
                                          augment_seed=seed if augment else None,
                                          masks=cfg.spec_augment, warp=self.warp)
        return batches.skip(start), None

    def step(self, batch, step):
        seed = tf.constant([self.cfg.seed, step], tf.int32)
        loss, guided, ctc = self.train_step(batch["features"], batch["frames"], batch["labels"],
                                            self.rate, seed)
        values = {"loss": float(loss), "guided attention": float(guided)}
        if self.cfg.ctc_weight:
            values["ctc"] = float(ctc)
        return values, int(tf.reduce_sum(batch["frames"]))

    def log_entry(self, means, rate, epoch):
        entry = {"train_loss": means["loss"], "train_guided_attention": means["guided attention"],
                 "frames_per_s": rate, "teacher_forcing": self.rate,
                 "lr": float(self.optimizer.learning_rate.numpy())}
        tf.summary.scalar("loss", entry["train_loss"])
        tf.summary.scalar("guided_attention", entry["train_guided_attention"])
        tf.summary.scalar("frames_per_s", rate)
        tf.summary.scalar("teacher_forcing", self.rate)
        if "ctc" in means:
            entry["train_ctc"] = means["ctc"]
            tf.summary.scalar("ctc", means["ctc"])
        return entry

    def validate(self) -> dict:
        result = transcribe(self.greedy, eval_batches(self.data["valid"], self.cfg.batch_size),
                            self.vocab, self.cfg.frame_stack, self.cfg.pyramid_layers)
        scores = speech_eval.error_rates(result["hyps"], result["refs"])
        scores.update(speech_eval.diagonality(result["attention"], result["out_lengths"],
                                              result["frames"]))
        return {"scores": scores, "score": scores["cer"], "decoded": result}

    def validation_entry(self, result):
        """CER, WER and diagonality to TensorBoard, with the attention images of the first
        validation utterances."""
        scores, decoded = result["scores"], result["decoded"]
        for k in ("cer", "wer", "monotonic", "monotonic_within_tolerance", "near_peak_mass"):
            tf.summary.scalar(k, scores[k])
        pics = [speech_eval.attention_image(a, steps, r) for a, steps, r in zip(
            decoded["attention"], decoded["steps"], decoded["refs"])][:N_ATTENTION]
        for i, pic in enumerate(pics):
            tf.summary.image(f"attention/valid_{i:02d}", pic[None])
        return {f"val_{k}": v for k, v in scores.items()}

    def describe(self, result):
        s = result["scores"]
        return f"valid CER {s['cer']:.4f} WER {s['wer']:.4f} monotonic {s['monotonic']:.3f}"

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


    def final_evaluation(self, run) -> dict:
        """Every evaluation split with the best weights (`evaluation.evaluate_splits`)."""
        if not run.best.latest_checkpoint:  # stopped before its first validation
            run.best.save()
        run.restore_best()
        return evaluate_splits(self.model, self.vocab, self.data, self.cfg, self.greedy)

    def report(self, run, metrics):
        cfg = self.cfg
        speech_eval.plot_history(run.history, RunDir(cfg.model_dir).loss_curve,
                                 f"LAS on {cfg.dataset}")
        return (cfg, {"sample_rate": self.sample_rate},
                (f"valid CER {metrics['valid_greedy']['cer']:.4f}",))


def open_run(cfg, distribution: distribute.Distribution | None = None) -> Loop:
    """The recogniser run of `cfg.model_dir`, new or resumed, ready to `run()`."""
    return driver.start(SpeechTask, cfg, distribution)


def train(cfg, distribution: distribute.Distribution | None = None) -> dict:
    """Trains (or resumes), evaluates the best weights, writes results.json and the plots
    (`tfawd.core.driver.train`)."""
    return driver.train(SpeechTask, cfg, distribution)
