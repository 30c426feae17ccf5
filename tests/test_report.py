"""README tables come from results files: rows per run, sections per evaluation method."""
import json
import pathlib

import pytest

from tfawd.core import readme_tables as report

RUN = {"dataset": "wikitext2", "val_ppl": 100.0, "test_ppl": 95.5, "epochs_completed": 3,
       "train_seconds": 600.0, "train_tokens_per_s": 1234.0, "command": "main.py --flagfile=x",
       "flags": {"model": "awd_lstm", "emsize": 200, "nhid": 400, "nlayers": 3}}


def test_a_run_row_shows_its_figures_sections_and_links(tmp_path):
    (tmp_path / "awd.json").write_text(json.dumps(RUN))
    (tmp_path / "awd_eval.json").write_text(json.dumps(
        {"cache": {"valid": {"ppl": 80.0, "seconds": 60.0}, "test": {"ppl": 77.25, "seconds": 180},
                   "command": "main.py --flagfile=x --mode=tune_cache"},
         "dynamic_eval_cache": {"valid": {"ppl": 60.0}, "test": {"ppl": 57.5},
                                "command": "main.py --flagfile=x --mode=tune_dynamic_eval"}}))
    (tmp_path / "awd_loss_curve.png").write_bytes(b"png")
    (tmp_path / "awd_eval_unrelated.json").write_text(json.dumps({"no": "metrics"}))
    published = pathlib.Path(__file__).resolve().parents[1] / "results" / "published.json"
    (tmp_path / "published.json").write_text(published.read_text())
    table = report.results_table(str(tmp_path))
    row = next(line for line in table.splitlines() if line.startswith("| AWD-LSTM"))
    assert ("| AWD-LSTM 200-400/400/200, tied | wikitext2 | 100.00 | 95.50 | 80.00 / 77.25 | - "
            "| 60.00 / 57.50 |") in row
    assert "10 min" in row and "1,234" in row and "python main.py --flagfile=x" in row
    assert "| not recorded | not recorded |" in row  # an old run without machine/precision
    (tmp_path / "awd.json").write_text(json.dumps({
        **RUN, "precision": "mixed_bfloat16", "machine": {
            "cpu": "AMD EPYC", "cores": 2, "isa": ["avx512f"], "bf16_units": ["avx512_bf16"]}}))
    row = next(line for line in report.results_table(str(tmp_path)).splitlines()
               if line.startswith("| AWD-LSTM"))
    assert "| AVX-512 + AVX512_BF16 (AMD EPYC, 2 cores) | mixed_bfloat16 |" in row
    assert "results/awd_loss_curve.png" in row
    assert ("- awd cache: `python main.py --flagfile=x --mode=tune_cache` (valid 1 min, "
            "test 3 min)") in table
    assert "| Merity et al. 2017 | AWD-LSTM | 68.6 | 65.8 |" in table  # labelled as theirs
    assert "| seed 000 | AWD-LSTM | 80.27 | 77.11 |" in table  # from results/published.json


def test_a_run_with_the_adaptive_softmax_says_so():
    assert report.describe(RUN["flags"]) == "AWD-LSTM 200-400/400/200, tied"
    assert report.describe({**RUN["flags"], "softmax": "adaptive"}) == (
        "AWD-LSTM 200-400/400/200, tied, adaptive softmax")
    base = {"model": "lstm", "emsize": 200, "nhid": 200, "nlayers": 2, "tie_weights": True}
    assert report.describe({**base, "softmax": "full"}) == "2-layer LSTM 200/200, tied"
    assert report.describe({**base, "softmax": "adaptive"}) == (
        "2-layer LSTM 200/200, tied, adaptive softmax")


def test_write_readme_replaces_only_the_generated_block(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "run.json").write_text(json.dumps(RUN))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.START}\nstale\n{report.END}\noutro\n")
    report.write_readme(str(readme), str(tmp_path / "r"))
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "stale" not in text
    assert "95.50" in text
    (tmp_path / "r" / "broken.json").write_text(json.dumps({"model": "las", "flags": {}}))
    readme.write_text(f"keep\n{report.START}\n{report.END}\n")
    with pytest.raises(KeyError):  # a table that cannot be rendered leaves README as it was
        report.write_readme(str(readme), str(tmp_path / "r"))
    assert readme.read_text() == f"keep\n{report.START}\n{report.END}\n"
    readme.write_text("no markers")
    with pytest.raises(SystemExit, match="report:start"):
        report.write_readme(str(readme), str(tmp_path / "r"))


def test_a_speech_run_gets_a_row_of_error_rates(tmp_path):
    run = {"model": "las", "dataset": "spoken_digits", "epochs": 12, "train_seconds": 1800.0,
           "command": "main.py --flagfile=configs/las_digits.cfg", "flags": {"model": "las"},
           "valid_greedy": {"cer": 0.02, "wer": 0.05}, "test_greedy": {"cer": 0.031, "wer": 0.08},
           "test_beam": {"cer": 0.025, "wer": 0.07}, "diagonality_first10": {"monotonic": 0.987}}
    (tmp_path / "las.json").write_text(json.dumps(run))
    (tmp_path / "awd.json").write_text(json.dumps(RUN))
    (tmp_path / "las_history.json").write_text(json.dumps([{"step": 1}]))
    table = report.speech_table(str(tmp_path))
    row = table.splitlines()[-1]
    assert row.startswith("| spoken_digits | 2.00% / 5.00% | 3.10% / 8.00% (2.50% / 7.00%) | - |")
    assert "98.7%" in row and "30 min" in row and "results/las.json" in row
    assert "AWD" not in table and "Speech recognition" in report.render(str(tmp_path))
    assert report.speech_table(str(tmp_path / "none")) == ""


def test_the_precision_guard_gets_a_row_with_both_differences(tmp_path):
    guard = {"config": "configs/x.cfg", "steps": 300, "window": [100, 300], "tolerance": 0.01,
             "mean_loss": {"float32": 6.0, "mixed_bfloat16": 6.03}, "mean_loss_rel_diff": 0.005,
             "val_ppl": {"float32": 400.0, "mixed_bfloat16": 410.0}, "val_ppl_rel_diff": 0.025,
             "holds": False}
    (tmp_path / "precision_guard_x.json").write_text(json.dumps(guard))
    row = report.precision_table(str(tmp_path)).splitlines()[-1]
    assert "100-300: 6.0000 / 6.0300 (0.50%)" in row
    assert "400.00 / 410.00 (2.50%) | - | no (1%) |" in row  # ran without the control
    guard["control"] = {"mean_loss_rel_diff": 0.001, "val_ppl_rel_diff": 0.04}
    (tmp_path / "precision_guard_x.json").write_text(json.dumps(guard))
    row = report.precision_table(str(tmp_path)).splitlines()[-1]
    assert "(2.50%) | 0.10% / 4.00% | no (1%) |" in row
    assert "### Mixed precision quality guard" in report.render(str(tmp_path))


def test_a_resumed_run_shows_every_command_that_trained_it(tmp_path):
    resumed = dict(RUN, commands=["main.py --flagfile=x --time_budget_min=40",
                                  "main.py --flagfile=x --time_budget_min=50"])
    (tmp_path / "awd.json").write_text(json.dumps(resumed))
    row = report.results_table(str(tmp_path)).splitlines()[2]
    assert ("`python main.py --flagfile=x --time_budget_min=40`, resumed by "
            "`python main.py --flagfile=x --time_budget_min=50`") in row
    assert report.shown_command(RUN) == "python main.py --flagfile=x"  # older files: `command`


def _bench(cpu, isa, units, onednn, caps=None, ratio=1.5):
    return {"config": "configs/awd_lstm_wt2.cfg", "precision": "float32",
            "model": {"emsize": 400, "nhid": 1150, "batch_size": 80},
            "tfawd_tokens_per_s": 1500.0, "reference_tokens_per_s": 1000.0, "ratio_median": ratio,
            "rounds": [{"ratio": ratio}], "achieved_fraction_of_peak": 0.7,
            "matmul_peak_gflops": 120.0,
            "eval_tokens_per_s": {"batch_10": 3000.0, "batch_1": 900.0},
            "command": "python benchmarks/lm_throughput.py", "commit": "abc",
            "machine": {"cpu": cpu, "cores": 2, "isa": isa, "bf16_units": units,
                        "onednn": {"enabled": onednn}, "isa_caps": caps or {}}}


def test_speed_rows_name_the_machine_class_and_oneDNN_and_group_by_class(tmp_path):
    benches = {"lm_throughput_a.json": _bench("Xeon", ["avx2", "avx512f"], ["amx_bf16"], True),
               "lm_throughput_b.json": _bench("EPYC", ["avx2"], [], True, ratio=1.81),
               "lm_throughput_c.json": _bench("EPYC", ["avx2", "avx512f"], ["avx512_bf16"], False,
                                              caps={"ONEDNN_MAX_CPU_ISA": "AVX2"})}
    for name, bench in benches.items():
        (tmp_path / name).write_text(json.dumps(bench))
    rows = [r for r in report.performance_table(str(tmp_path)).splitlines() if r.startswith("| A")]
    assert [r.split(" | ")[0] for r in rows] == ["| AMX bf16", "| AVX2",
                                                 "| AVX2 (emulated: EPYC with ISA caps)"]
    assert "| on | 1,500 | 1,000 | 1.81x (1.81) |" in rows[1]
    assert "| off |" in rows[2]


def test_an_adaptive_softmax_row_says_so_beside_its_ratio(tmp_path):
    """The reference trains the full softmax: a ratio of the adaptive step is not like for like."""
    full = _bench("Xeon", ["avx2", "avx512f"], ["amx_bf16"], True, ratio=2.5)
    adaptive = _bench("Xeon", ["avx2", "avx512f"], ["amx_bf16"], True, ratio=3.9)
    adaptive["model"]["softmax"] = "adaptive"
    (tmp_path / "lm_throughput_full.json").write_text(json.dumps(full))
    (tmp_path / "lm_throughput_adaptive.json").write_text(json.dumps(adaptive))
    rows = [r for r in report.performance_table(str(tmp_path)).splitlines() if r.startswith("| A")]
    marked = [r for r in rows if "adaptive softmax |" in r]
    assert len(marked) == 1 and "3.90x (3.90) (adaptive against the reference's full softmax)" \
        in marked[0]
    assert "softmax" not in next(r for r in rows if r not in marked)
