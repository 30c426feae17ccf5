"""benchmarks/seed_spread.py: several seeds of one config summed up as mean and range, and the
README's several-seeds table rendered from its JSON (issue 29: "the mean of at least two seeds
with their spread, each run's machine beside it")."""
import json
import pathlib
import sys

import pytest

from tfawd.core import readme_tables

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import common  # noqa: E402
import seed_spread  # noqa: E402

MACHINE = {"cpu": "AMD EPYC", "cores": 2, "isa": ["avx512f"], "bf16_units": ["avx512_bf16"]}


def run(seed, test_cer, speakers, heldout=False):
    scores = {"cer": test_cer, "wer": 2 * test_cer,
              "per_speaker": {s: {"cer": c, "wer": 0.5, "utterances": 3}
                              for s, c in speakers.items()}}
    res = {"model": "las", "dataset": "an4", "flags": {"seed": seed}, "machine": MACHINE,
           "valid_joint": {"cer": test_cer / 2, "wer": test_cer},
           "test_joint": scores, "test_greedy": {"cer": 0.3, "wer": 0.4},
           "diagonality_first10": {"monotonic": 0.9, "monotonic_within_tolerance": 1.0},
           "epochs_completed": 50 + seed, "steps": 1000 * seed, "train_seconds": 3000.0 + seed}
    if heldout:
        res["heldout_greedy"] = {"cer": 0.1, "wer": 0.2}
    return res


def test_the_summary_is_the_mean_and_range_over_the_seeds_of_every_shared_decoding():
    runs = {"1": run(1, 0.05, {"a": 0.02, "b": 0.08}), "2": run(2, 0.07, {"a": 0.04, "b": 0.10},
                                                            heldout=True)}
    summary = seed_spread.summarise(runs)
    cer = summary["test_joint"]["cer"]
    assert cer["mean"] == pytest.approx(0.06) and (cer["min"], cer["max"]) == (0.05, 0.07)
    assert cer["values"] == [0.05, 0.07]
    assert summary["test_joint"]["wer"]["mean"] == pytest.approx(0.12)
    assert summary["test_joint"]["per_speaker_cer"] == pytest.approx({"a": 0.03, "b": 0.09})
    assert "per_speaker_cer" not in summary["test_greedy"]  # no speakers recorded there
    assert "heldout_greedy" not in summary  # only one of the two runs has it
    assert summary["epochs_completed"]["values"] == [51, 52]
    assert summary["diagonality_monotonic"]["mean"] == pytest.approx(0.9)


def test_a_finished_run_of_another_seed_is_not_taken_for_this_one(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(run(1, 0.05, {})))
    assert common.finished_run(str(tmp_path), 1)["flags"]["seed"] == 1
    assert common.finished_run(str(tmp_path), 2) is None
    assert common.finished_run(str(tmp_path / "absent"), 1) is None


def test_the_readme_gets_a_row_per_decoding_with_mean_range_and_machine(tmp_path):
    runs = {"1": run(1, 0.05, {"a": 0.02}), "2": run(2, 0.07, {"a": 0.04})}
    spread = {"benchmark": "seed_spread", "dataset": "an4", "seeds": [1, 2],
              "command": "python benchmarks/seed_spread.py --config=configs/las_an4.cfg",
              "conditions": "side by side, 1 thread(s) each", "machine": MACHINE,
              "summary": seed_spread.summarise(runs), "runs": runs, "attention": "x"}
    (tmp_path / "las_an4.json").write_text(json.dumps(spread))
    published = pathlib.Path(__file__).resolve().parents[1] / "results" / "published.json"
    (tmp_path / "published.json").write_text(published.read_text())
    table = readme_tables.seeds_table(str(tmp_path))
    rows = [line for line in table.splitlines() if line.startswith("| an4 |")]
    assert [r.split(" | ")[2] for r in rows] == ["greedy", "joint"]  # in decoding order
    joint = rows[1]
    assert "| 3.00% (2.50%-3.50%) | 6.00% (5.00%-7.00%) | 12.00% (10.00%-14.00%) |" in joint
    assert "AVX-512 + AVX512_BF16 (AMD EPYC, 2 cores)" in joint and "50 min" in joint
    assert "results/las_an4.json" in joint and "results/las_an4_attention/" in joint
    assert "| ESPnet egs/an4 (audio) | VGG-BLSTMP, location attention + joint CTC 0.5 | an4 | " \
        "15.3% | - |" in table  # the published figures beside ours (results/published.json)
    assert "| 3.6% | 7.4% |" in table
    assert "#### Several seeds" in readme_tables.render(str(tmp_path))
    assert readme_tables.seeds_table(str(tmp_path / "none")) == ""


def test_one_seed_is_refused_before_anything_trains(tmp_path):
    import subprocess
    out = subprocess.run([sys.executable, str(pathlib.Path(seed_spread.__file__)),
                          "--config=configs/las_an4.cfg", "--seeds=3,3",
                          f"--work_dir={tmp_path}", f"--out={tmp_path / 'x.json'}"],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "at least two different seeds" in out.stderr
    assert not list(tmp_path.iterdir())
