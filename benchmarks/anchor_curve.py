"""A run's validation perplexity by epoch beside a published learning curve (issue 24).

The anchor is GluonNLP's training log of the paper-size AWD-LSTM on WikiText-2 (model zoo,
awd_lstm_lm_1150_wikitext-2.log: emb 400, hidden 1150, 3 layers, tied, the paper's dropouts,
NT-ASGD on a GPU), as quoted in the project's brief (../shared/GUIDE.md, section 3): validation
perplexity after the given number of epochs. Writes one PNG (both curves, the seed's 80.27
line) and prints a Markdown table of the run's figures at the anchor's epochs.

  python benchmarks/anchor_curve.py --history=results/awd_lstm_wt2_long_history.json \
      --out=results/awd_lstm_wt2_long_curve.png \
      --compare="attempt 1 (run folder lost)=results/awd_lstm_wt2_long_attempt1_history.json"

`--compare` draws earlier runs of the same recipe (e.g. one whose run folder was lost and which
restarted from scratch) beside the run, so a reader sees whether the restart follows the same
curve.
"""
import json
import os

import common  # first: sys.path and oneDNN
from absl import app, flags

from tfawd.core import reporting  # matplotlib set to Agg there

plt = reporting.plt

# Epochs completed -> validation perplexity (GluonNLP's 400/1150 log) and the seed's AWD-LSTM
# row, from results/published.json.
with open(os.path.join(common.REPO, "results", "published.json")) as _f:
    _PUBLISHED = json.load(_f)
GLUONNLP_1150 = {int(e): p for e, p in
                 _PUBLISHED["gluonnlp_wikitext2_valid_by_epoch"]["awd_lstm_1150"].items()}
SEED_VALID = next(p["valid"] for p in _PUBLISHED["wikitext2_ppl"]
                  if p["source"] == "seed 000" and p["model"] == "AWD-LSTM")

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The flags (defined when run as a script, so tests can import it beside the other
    benchmarks that define --out)."""
    flags.DEFINE_string("history", None, "The run's history.json (or a results/*_history.json).")
    flags.DEFINE_string("out", None, "The PNG to write.")
    flags.DEFINE_string("label", "tfawd", "The run's name in the legend.")
    flags.DEFINE_multi_string("compare", [], "LABEL=HISTORY: an earlier run's history.json "
                              "drawn beside the run (repeatable).")
    flags.mark_flags_as_required(["history", "out"])


def epoch_curve(history: list) -> list:
    """[(epoch, val_ppl, averaged)] of the epoch-end validations (partial checks left out)."""
    return [(h["epoch"], h["val_ppl"], bool(h.get("averaged")))
            for h in history if "val_ppl" in h and not h.get("partial") and not h.get("initial")]


def table(curve: list, anchor: dict = GLUONNLP_1150, others: tuple = ()) -> str:
    """Markdown: at each anchor epoch the run has reached (and at its latest epoch), its
    perplexity, each earlier run's of `others` ([(label, curve)]; '-' where it has none) and
    the anchor's."""
    ours = {e: p for e, p, _ in curve}
    columns = [(label, {e: p for e, p, _ in other}) for label, other in others]

    def row(name, epoch, theirs):
        cells = [f"{ours[epoch]:.2f}"] + [f"{c[epoch]:.2f}" if epoch in c else "-"
                                          for _, c in columns] + [theirs]
        return f"| {name} | " + " | ".join(cells) + " |"

    rows = ["| epochs | tfawd valid ppl | " + "".join(f"{label} | " for label, _ in columns)
            + "GluonNLP valid ppl |", "|---|---|" + "---|" * len(columns) + "---|"]
    rows += [row(epoch, epoch, f"{theirs:.2f}") for epoch, theirs in anchor.items()
             if epoch in ours]
    if curve and curve[-1][0] not in anchor:
        rows.append(row(f"{curve[-1][0]} (latest)", curve[-1][0], "-"))
    return "\n".join(rows)


def parse_compare(specs: list) -> list:
    """[(label, history path)] from --compare's LABEL=HISTORY values."""
    pairs = []
    for spec in specs:
        label, sep, path = spec.rpartition("=")
        if not sep or not label.strip() or not path.strip():
            raise app.UsageError(f"--compare={spec!r}: expected LABEL=HISTORY, e.g. "
                                 "--compare='attempt 1=results/x_history.json'")
        if not os.path.isfile(path):
            raise app.UsageError(f"--compare={spec!r}: no file {path}")
        pairs.append((label.strip(), path))
    return pairs


def plot(curve: list, path: str, label: str, anchor: dict = GLUONNLP_1150,
         others: tuple = ()) -> str:
    """The run's curve (SGD and averaged parts), earlier runs `others` ([(label, curve)]) in
    grey, the anchor's figures and the seed's line; log scale."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for i, (other_label, other) in enumerate(others):
        ax.plot([e for e, _, _ in other], [p for _, p, _ in other], ".-",
                color=str(0.45 + 0.2 * i), ms=3, lw=1, label=other_label)
    sgd = [(e, p) for e, p, avg in curve if not avg]
    avg = [(e, p) for e, p, a in curve if a]
    if sgd:
        ax.plot(*zip(*sgd), "o-", ms=3, label=f"{label}: SGD")
    if avg:
        ax.plot(*zip(*avg), "o-", ms=3, label=f"{label}: averaged (NT-ASGD)")
    last = max([e for e, _, _ in curve] + [e for _, o in others for e, _, _ in o] + [100])
    ax.plot(*zip(*[(e, p) for e, p in anchor.items() if e <= last]), "s--", ms=4,
            label="GluonNLP 400/1150 (published log)")
    ax.axhline(SEED_VALID, color="gray", lw=1, ls=":", label=f"seed's AWD-LSTM row ({SEED_VALID})")
    ax.set_yscale("log")
    ax.set_xlabel("epochs completed")
    ax.set_ylabel("validation perplexity")
    ax.set_title("AWD-LSTM 400/1150 on WikiText-2: validation by epoch")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main():
    with open(FLAGS.history) as f:
        curve = epoch_curve(json.load(f))
    if not curve:
        raise app.UsageError(f"{FLAGS.history} holds no epoch-end validation yet")
    others = []
    for other_label, other_path in parse_compare(FLAGS.compare):
        with open(other_path) as f:
            others.append((other_label, epoch_curve(json.load(f))))
    plot(curve, FLAGS.out, FLAGS.label, others=others)
    print(table(curve, others=others))
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    define_flags()
    common.run(main)
