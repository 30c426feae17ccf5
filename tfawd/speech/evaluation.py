"""Scoring a speech recogniser: error rates, attention diagonality and attention plots.

- `error_rates`: character and word error rates, total edit distance over total reference
  length (`tf.edit_distance` with normalize=False, summed), the usual corpus-level definition.
- `diagonality`: how monotonic an alignment is. For each decoder step up to the output's
  `<eos>`, the attention peak (argmax over frames); `monotonic` is the fraction of steps whose
  peak does not move backwards (strict), `monotonic_within_tolerance` the fraction that moves
  back by at most `tolerance` frames (the speller often reads a word's letters from frames
  in slightly different order inside the word, as the BiLSTM spreads the word over them),
  `near_peak_mass` the mean attention mass within +-`width` frames of the peak.
- `plot_attention`: one PNG per utterance, output characters against input frames.
- `evaluate_splits`: greedy (and beam) decoding of every evaluation split, scored; a model
  with a CTC head also by its CTC head alone (`ctc`) and by joint CTC/attention beam search
  (`joint`, `tfawd.speech.joint_decoding`); `evaluate`
  is `--mode=evaluate --model=las` on a trained run (the model only, no trainer).
"""
import io
import os
import time

import matplotlib
import numpy as np
import tensorflow as tf

from pipelines.speech_features import CharVocab
from tfawd.core import files, reporting
from tfawd.core.run_dir import RunDir
from tfawd.speech import char_lm, inference, joint_decoding
from tfawd.speech.data import featurized
from tfawd.speech.inference import make_decoder
from tfawd.speech.las import encoder_frames

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _edit_total(hyps, refs, split):
    """Sum of edit distances and of reference lengths, tokens made by `split`."""
    h = split(tf.constant(list(hyps), tf.string))
    r = split(tf.constant(list(refs), tf.string))
    dist = tf.edit_distance(h.to_sparse(), r.to_sparse(), normalize=False)
    return float(tf.reduce_sum(dist)), int(tf.reduce_sum(r.row_lengths()))


def error_rates(hyps, refs) -> dict:
    """{"cer", "wer"} of hypothesis strings against reference strings (same order)."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses for {len(refs)} references")
    chars = _edit_total(hyps, refs, lambda s: tf.strings.unicode_split(s, "UTF-8"))
    words = _edit_total(hyps, refs, lambda s: tf.strings.split(s))
    return {"cer": chars[0] / max(chars[1], 1), "wer": words[0] / max(words[1], 1)}


def diagonality(attention, out_lengths, frames, width: int = 3, tolerance: int = 4) -> dict:
    """attention [N, L, T] (numpy), out_lengths [N] decoder steps to score (incl. <eos>),
    frames [N] encoder frames -> {"monotonic", "monotonic_within_tolerance", "tolerance",
    "near_peak_mass", "steps"}."""
    moves, masses = [], []
    for a, n, t in zip(attention, out_lengths, frames):
        a = np.asarray(a)[:n, :t]
        if n == 0:
            continue
        peaks = a.argmax(axis=1)
        moves.extend(np.diff(peaks))
        for step, p in enumerate(peaks):
            masses.append(a[step, max(0, p - width):p + width + 1].sum())
    moves = np.asarray(moves)
    return {"monotonic": float(np.mean(moves >= 0)) if moves.size else 1.0,
            "monotonic_within_tolerance": (float(np.mean(moves >= -tolerance)) if moves.size
                                           else 1.0),
            "tolerance": tolerance,
            "near_peak_mass": float(np.mean(masses)) if masses else 0.0,
            "steps": len(masses)}


def attention_figure(attention, chars, title=""):
    """A matplotlib figure: rows are output characters, columns encoder frames."""
    fig, ax = plt.subplots(figsize=(max(4, attention.shape[1] / 25), max(3, len(chars) / 4)),
                           dpi=100)
    ax.imshow(attention, aspect="auto", origin="upper", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(chars)))
    ax.set_yticklabels([c if c != " " else "␣" for c in chars], fontsize=7)
    ax.set_xlabel("encoder frame")
    ax.set_ylabel("output character")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_attention(attention, chars, path, title="") -> str:
    fig = attention_figure(attention, chars, title)
    files.save_figure(fig, path)
    plt.close(fig)
    return path


def attention_image(attention, chars, title="") -> np.ndarray:
    """The figure as a uint8 [H, W, 4] image (for tf.summary.image)."""
    fig = attention_figure(attention, chars, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return tf.io.decode_png(buf.getvalue(), channels=4).numpy()


def plot_history(history, path, title="") -> str:
    """Training loss per log interval and validation CER per epoch against steps."""
    train = [(h["step"], h["train_loss"]) for h in history if "train_loss" in h]
    valid = [(h["step"], h["val_cer"]) for h in history if "val_cer" in h]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    if train:
        ax.plot(*zip(*train), label="training loss (label-smoothed CE)", lw=1)
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    if valid:
        ax2 = ax.twinx()
        ax2.plot(*zip(*valid), "o-", color="tab:red", label="validation CER", lw=1.5)
        ax2.set_ylabel("CER")
        ax2.legend(loc="upper center")
    ax.legend(loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    files.save_figure(fig, path)
    plt.close(fig)
    return path


# -- decoding and scoring splits ------------------------------------------------------------
N_ATTENTION = 10  # validation utterances whose attention is plotted and saved

def transcribe(decode, data, vocab, frame_stack=1, pyramid_layers=0) -> dict:
    """Decodes a batched split: hypotheses, references, attention maps (trimmed to output
    length incl. <eos> and to the utterance's encoder frames), in dataset order."""
    out = {"hyps": [], "refs": [], "attention": [], "out_lengths": [], "frames": [], "steps": [],
           "speakers": []}
    for batch in data:
        tokens, _, attn = decode(batch["features"], batch["frames"])
        enc = encoder_frames(batch["frames"].numpy(), frame_stack, pyramid_layers)
        if "speaker" in batch:
            out["speakers"].extend(s.decode() for s in batch["speaker"].numpy())
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
    padding = {"features": 0.0, "frames": 0, "labels": 0, "transcript": "", "speaker": ""}
    return data.padded_batch(batch_size, padding_values={k: padding[k] for k in
                                                         data.element_spec})


def per_speaker(result) -> dict:
    """{speaker: {"cer", "wer", "utterances"}} of a transcribed split whose source names
    speakers (empty otherwise)."""
    rows = {}
    for speaker, hyp, ref in zip(result["speakers"], result["hyps"], result["refs"]):
        rows.setdefault(speaker, ([], []))
        rows[speaker][0].append(hyp)
        rows[speaker][1].append(ref)
    return {s: {**error_rates(h, r), "utterances": len(h)} for s, (h, r) in sorted(rows.items())}


def write_attention(model_dir, result, n=N_ATTENTION) -> dict:
    """PNGs + attention.npy (padded [n, L, T]) of the first n validation utterances."""
    folder = RunDir(model_dir).attention
    files.makedirs(folder)
    maps = result["attention"][:n]
    padded = np.zeros([len(maps), max(m.shape[0] for m in maps), max(m.shape[1] for m in maps)],
                      np.float32)
    for i, m in enumerate(maps):
        padded[i, :m.shape[0], :m.shape[1]] = m
        plot_attention(m, result["steps"][i],
                                   os.path.join(folder, f"valid_{i:02d}.png"),
                                   f"ref: {result['refs'][i]}\nhyp: {result['hyps'][i]}")
    files.save_npy(RunDir(model_dir).attention_npy, padded)
    return diagonality(maps, result["out_lengths"][:n], result["frames"][:n])


def score_split(decode, split, vocab, cfg) -> tuple:
    """(transcription, scores) of one featurized split by `decode`: CER/WER, utterances,
    seconds, the first examples and, where the source names speakers, per-speaker rates."""
    t0 = time.perf_counter()
    result = transcribe(decode, eval_batches(split, cfg.batch_size), vocab, cfg.frame_stack,
                        cfg.pyramid_layers)
    scores = error_rates(result["hyps"], result["refs"])
    scores.update(utterances=len(result["hyps"]), seconds=round(time.perf_counter() - t0, 2),
                  examples=[{"ref": r, "hyp": h} for r, h in
                            zip(result["refs"][:5], result["hyps"][:5])])
    if result["speakers"]:
        scores["per_speaker"] = per_speaker(result)
    return result, scores


def load_for_evaluation(cfg) -> tuple:
    """(model, cfg with the run's architecture, vocabulary, featurized splits incl. train) of
    the trained run in `cfg.model_dir`, its features normalised as it was trained."""
    model, cfg = inference.load_trained(cfg)
    vocab = CharVocab()
    stats = ((model.feature_mean.numpy(), model.feature_std.numpy())
             if model.feature_norm == "global" else None)
    data, _, _ = featurized(cfg, vocab, stats)
    return model, cfg, vocab, data


def evaluate_splits(model, vocab, data, cfg, greedy=None) -> dict:
    """Every evaluation split of `data` decoded greedily (and with beam search when
    --beam_size > 1) and scored; the attention PNGs and attention.npy of the first validation
    utterances go to `cfg.model_dir`. `greedy`: a greedy decoder already traced."""
    decoders = {"greedy": greedy or make_decoder(model, cfg.max_decode_len)}
    if cfg.beam_size > 1:
        decoders["beam"] = make_decoder(model, cfg.max_decode_len, cfg.beam_size)
    if model.ctc_head is not None:
        decoders["ctc"] = joint_decoding.make_ctc_decoder(model, cfg.max_decode_len)
        if cfg.ctc_decode_weight and cfg.beam_size > 1:
            decoders["joint"] = joint_decoding.make_joint_decoder(
                model, cfg.max_decode_len, cfg.beam_size, cfg.ctc_decode_weight)
    metrics = {}
    if cfg.lm_weight or cfg.lm_length_bonus:
        if "joint" not in decoders:
            raise ValueError("--lm_weight / --lm_length_bonus fuse a character LM into the joint "
                             "CTC/attention beam search: it needs a model trained with "
                             "--ctc_weight > 0, and --ctc_decode_weight > 0 and --beam_size > 1")
        lm, metrics["char_lm"] = char_lm.for_run(cfg, vocab, data)
        decoders["joint_lm"] = joint_decoding.make_joint_decoder(
            model, cfg.max_decode_len, cfg.beam_size, cfg.ctc_decode_weight, lm=lm,
            lm_weight=cfg.lm_weight, length_bonus=cfg.lm_length_bonus)
    for split in [s for s in data if s != "train"]:
        for name, decode in decoders.items():
            result, scores = score_split(decode, data[split], vocab, cfg)
            metrics[f"{split}_{name}"] = scores
            if split == "valid" and name == "greedy":
                metrics["diagonality_first10"] = write_attention(cfg.model_dir, result)
                metrics["diagonality_valid"] = diagonality(
                    result["attention"], result["out_lengths"], result["frames"])
            reporting.line(f"{split} ({name})", f"CER {scores['cer']:.4f}",
                           f"WER {scores['wer']:.4f}")
    return metrics


def evaluate(cfg) -> dict:
    """`--mode=evaluate --model=las`: the trained run of `cfg.model_dir` (its own
    architecture, best weights) on every evaluation split; writes evaluation.json."""
    model, cfg, vocab, data = load_for_evaluation(cfg)
    metrics = evaluate_splits(model, vocab, data, cfg)  # train: only for a character LM
    path = RunDir(cfg.model_dir).evaluation
    reporting.write_json(path, metrics)
    reporting.line("evaluate", path)
    return metrics
