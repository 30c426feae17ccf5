"""benchmarks/anchor_curve.py: the long run's validation by epoch beside GluonNLP's published
log, and earlier attempts of the same recipe beside it (issue 24)."""
import json
import pathlib
import sys

import pytest
from absl import app

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import anchor_curve  # noqa: E402

HISTORY = [
    {"step": 0, "epoch": 0, "val_ppl": 33000.0, "initial": True},
    {"step": 50, "epoch": 1, "train_loss": 7.8},
    {"step": 776, "epoch": 1, "val_ppl": 363.4},
    {"step": 800, "epoch": 2, "val_ppl": 300.0, "partial": True},
    {"step": 1552, "epoch": 2, "val_ppl": 229.9},
    {"step": 2328, "epoch": 3, "val_ppl": 150.0, "averaged": True},
]


def test_the_curve_is_the_epoch_end_validations_only():
    assert anchor_curve.epoch_curve(HISTORY) == [(1, 363.4, False), (2, 229.9, False),
                                                 (3, 150.0, True)]


def test_the_table_pairs_the_run_with_the_anchor_at_its_epochs():
    curve = [(e, 200.0 - e, False) for e in range(1, 26)]
    lines = anchor_curve.table(curve).splitlines()
    assert lines[2:] == ["| 10 | 190.00 | 148.00 |", "| 25 | 175.00 | 102.20 |"]
    assert anchor_curve.table(curve[:11]).splitlines()[-1] == "| 11 (latest) | 189.00 | - |"


def test_the_table_gives_earlier_runs_a_column_each():
    curve = [(e, 200.0 - e, False) for e in range(1, 12)]
    lines = anchor_curve.table(curve, others=[("attempt 1", curve[:10])]).splitlines()
    assert lines[0] == "| epochs | tfawd valid ppl | attempt 1 | GluonNLP valid ppl |"
    assert lines[1] == "|---|---|---|---|"
    assert lines[2:] == ["| 10 | 190.00 | 190.00 | 148.00 |", "| 11 (latest) | 189.00 | - | - |"]


def test_compare_takes_label_equals_history(tmp_path):
    h = tmp_path / "attempt1_history.json"
    h.write_text(json.dumps(HISTORY))
    assert anchor_curve.parse_compare([f"attempt 1 (lost)={h}"]) == [("attempt 1 (lost)", str(h))]
    with pytest.raises(app.UsageError, match="LABEL=HISTORY"):
        anchor_curve.parse_compare([str(h)])
    with pytest.raises(app.UsageError, match="no file"):
        anchor_curve.parse_compare([f"x={tmp_path / 'missing.json'}"])


def test_the_plot_with_an_earlier_attempt_is_a_png(tmp_path):
    curve = anchor_curve.epoch_curve(HISTORY)
    out = anchor_curve.plot(curve, str(tmp_path / "c.png"), "run",
                            others=[("attempt 1", curve[:2])])
    assert pathlib.Path(out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
