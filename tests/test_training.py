"""Training behaviour: learning, lr annealing, outputs, and exact resume."""
import json
import os
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tfawd.lm.config import LMConfig
from tfawd.lm.modes import evaluate
from tfawd.lm.training import RunError, open_run, train


def tiny_cfg(model_dir, **kw):
    base = dict(model_dir=str(model_dir), emsize=16, nhid=16, nlayers=2, dropout=0.2,
                batch_size=4, eval_batch_size=2, test_batch_size=1, bptt=8, variable_bptt=True,
                lr=2.0, max_epochs=2, log_every=5, checkpoint_every=7, seed=3,
                precision="float32")  # the same numbers on every CPU (auto would differ)
    base.update(kw)
    return LMConfig(**base)


def test_training_learns_and_writes_results_plot_and_tensorboard(tiny_corpus, tmp_path):
    cfg = tiny_cfg(tmp_path / "run", max_epochs=8, lr=5.0)
    metrics = train(cfg, tiny_corpus)
    # The tiny corpus is ~90% deterministic successor: its entropy is ppl ~1.9, a uniform
    # model scores 31.
    assert metrics["val_ppl"] < 4 and metrics["test_ppl"] < 4
    assert metrics["weights"] == "best" and metrics["epochs_completed"] == 8
    results = json.load(open(tmp_path / "run" / "results.json"))
    for key in ("val_ppl", "test_ppl", "train_tokens_per_s", "train_seconds", "versions", "flags"):
        assert key in results
    assert results["flags"]["emsize"] == 16
    assert results["commands"] == [results["command"]]  # trained by one invocation
    assert results["test_eval"]["batch_size"] == 1
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 10000
    events = os.listdir(tmp_path / "run" / "tb" / "train")
    assert events and events[0].startswith("events.out.tfevents")


def test_learning_rate_is_divided_when_validation_does_not_improve(tiny_corpus, tmp_path):
    trainer = open_run(tiny_cfg(tmp_path / "run", lr=4.0, lr_decay=4.0), tiny_corpus)
    trainer.end_epoch()  # first validation always improves on +inf
    assert float(trainer.task.lm.lr) == 4.0
    trainer.state.best_score.assign(0.0)  # now nothing can improve
    trainer.end_epoch()
    assert float(trainer.task.lm.lr) == 1.0
    assert int(trainer.state.epoch) == 2 and int(trainer.state.batch) == 0


def test_max_steps_bounds_the_run_and_a_stop_inside_an_epoch_keeps_its_weights(tiny_corpus,
                                                                              tmp_path):
    """Stopped inside the first epoch, the run validates the weights it has and evaluates
    them (before, it fell back to the last weights validated at an epoch end)."""
    metrics = train(tiny_cfg(tmp_path / "run", max_steps=9), tiny_corpus)
    assert metrics["steps"] == 9 and metrics["stopped"] == "max_steps"
    history = json.load(open(tmp_path / "run" / "history.json"))
    partial = [h for h in history if h.get("partial")]
    assert len(partial) == 1 and partial[0]["step"] == 9 and partial[0]["kept"]
    assert metrics["weights"] == "best"
    assert metrics["val_nll"] == pytest.approx(partial[0]["val_loss"], rel=1e-6)


def test_a_stop_inside_a_later_epoch_keeps_the_better_of_it_and_the_best_epoch(tiny_corpus,
                                                                               tmp_path):
    from pipelines.bptt import num_windows
    first = num_windows(len(tiny_corpus.ids["train"]), 4, 8, seed=3, epoch=0)
    cfg = tiny_cfg(tmp_path / "run", max_steps=first + first // 2, lr_decay=1.0)
    metrics = train(cfg, tiny_corpus)
    history = json.load(open(tmp_path / "run" / "history.json"))
    epoch_end = [h["val_loss"] for h in history if "val_loss" in h and not h.get("partial")]
    partial = [h for h in history if h.get("partial")][0]
    assert len(epoch_end) == 1 and partial["kept"] == (partial["val_loss"] < epoch_end[0])
    assert metrics["val_nll"] == pytest.approx(min(epoch_end[0], partial["val_loss"]), rel=1e-6)


def _weights(trainer):
    return [v.numpy() for v in trainer.model.weights] + [
        v.numpy() for layer in trainer.task.lm.hidden for v in layer]


@pytest.mark.parametrize("split_at", [3, 7, 60])  # mid-epoch before/at a checkpoint, next epoch
def test_resume_continues_exactly_where_it_stopped(tiny_corpus, tmp_path, split_at):
    """N steps in one run == split_at steps, a new process-like restart, then the rest."""
    total = 70  # the tiny corpus has ~42 windows per epoch, so this crosses an epoch boundary
    straight = open_run(tiny_cfg(tmp_path / "a", max_steps=total), tiny_corpus)
    straight.run()
    first = open_run(tiny_cfg(tmp_path / "b", max_steps=split_at), tiny_corpus)
    first.run()
    del first
    resumed = open_run(tiny_cfg(tmp_path / "b", max_steps=total), tiny_corpus)
    assert int(resumed.state.step) == split_at
    resumed.run()
    assert int(resumed.state.step) == int(straight.state.step) == total
    assert int(resumed.state.epoch) == int(straight.state.epoch)
    for a, b in zip(_weights(straight), _weights(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert float(resumed.task.lm.lr) == float(straight.task.lm.lr)


def test_profile_steps_write_a_trace_for_the_tensorboard_profile_tab(tiny_corpus, tmp_path):
    train(tiny_cfg(tmp_path / "run", max_steps=6, profile_steps="2,4"), tiny_corpus)
    traces = list((tmp_path / "run" / "tb" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 1000


def test_resuming_with_other_shapes_is_refused_naming_the_flags(tiny_corpus, tmp_path):
    train(tiny_cfg(tmp_path / "run", max_steps=2), tiny_corpus)
    with pytest.raises(RunError, match=r"--nhid=16 \(now 32\)"):
        open_run(tiny_cfg(tmp_path / "run", nhid=32, emsize=32), tiny_corpus)


def test_evaluate_without_a_checkpoint_says_to_train_first(tmp_path):
    with pytest.raises(RunError, match="no checkpoint in --model_dir"):
        evaluate(tiny_cfg(tmp_path / "empty"))


@pytest.mark.parametrize("model", ["lstm", "awd_lstm"])
def test_best_checkpoint_holds_every_weight_and_reproduces_its_validation_score(
        tiny_corpus, tmp_path, model):
    """Re-evaluating the saved best weights gives exactly the score they were saved with,
    even after training moved on (the checkpoint must hold every layer, including the LSTMs
    kept in a Python list)."""
    extra = dict(model="awd_lstm", emsize=16, nhid=16) if model == "awd_lstm" else {}
    trainer = open_run(tiny_cfg(tmp_path / "run", max_epochs=2, **extra), tiny_corpus)
    trainer.run()
    best = float(trainer.state.best_score)
    names = {n for n, _ in tf.train.list_variables(trainer.best.latest_checkpoint)}
    assert sum(n.startswith("variables/") for n in names) == len(trainer.model.variables)
    trainer.settings.max_epochs, trainer.settings.max_steps = 3, int(trainer.state.step) + 10
    trainer.run()  # 10 more steps, stopped inside an epoch: the live weights drift
    assert trainer.task.validate()["nll"] != pytest.approx(best, rel=1e-6)
    stop = trainer.history[-1]  # the check at the stop keeps those weights only if better
    assert stop["partial"] and stop["kept"] == (stop["val_loss"] < best)
    kept = stop["val_loss"] if stop["kept"] else best
    assert trainer.task.final_evaluation(trainer)["val_nll"] == pytest.approx(kept, rel=1e-6)


def test_evaluation_modes_add_cache_and_dynamic_eval_sections(tiny_corpus, tmp_path):
    """tune_cache picks theta/lambda on validation only; evaluate with the chosen values and
    dynamic evaluation records every method beside the plain figures."""
    from tfawd.lm.modes import tune_cache, tune_dynamic_eval
    cfg = tiny_cfg(tmp_path / "run", max_epochs=2, cache_window=30, cache_thetas="0.5,1",
                   cache_lambdas="0,0.2", dynamic_eval_lrs="0,1e-3", dynamic_eval_lambdas="0",
                   dynamic_eval_grad_batches=5, dynamic_eval_bptt=5)
    train(cfg, tiny_corpus)
    tuned = tune_cache(cfg, tiny_corpus)
    assert len(tuned["valid"]["grid"]) == 4 and len(tuned["test"]["grid"]) == 1
    assert (tuned["test"]["theta"], tuned["test"]["lambda"]) == (
        tuned["valid"]["theta"], tuned["valid"]["lambda"])
    dynamic = tune_dynamic_eval(cfg, tiny_corpus)
    assert len(dynamic["search"]["grid"]) == 2
    assert dynamic["test"]["tokens"] == len(tiny_corpus.ids["test"]) - 1
    metrics = evaluate(cfg, tiny_corpus)
    results = json.load(open(tmp_path / "run" / "eval_results.json"))
    assert {"plain", "cache", "dynamic_eval"} <= set(results)
    assert all(results[s]["command"] == " ".join(sys.argv) for s in ("plain", "cache"))
    assert all(results[s]["machine"]["cores"] >= 1 and results[s]["machine"]["cpu"]
               for s in ("plain", "cache", "dynamic_eval"))  # where each evaluation ran
    assert results["plain"]["test_ppl"] == pytest.approx(metrics["test_ppl"])
    assert results["cache"]["test"]["base_ppl"] == pytest.approx(metrics["test_ppl"], rel=1e-5)
    for split in ("valid", "test"):  # evaluate applies the given pair, no search
        assert (results["cache"][split]["theta"], results["cache"][split]["lambda"]) == (
            cfg.cache_theta, cfg.cache_lambda)


def test_a_run_of_several_processes_lists_each_as_a_segment(tiny_corpus, tmp_path):
    """segments.json (and results.json): one record per start or resume, its steps, seconds,
    tokens and machine; the segments tile the run's steps and add up to its training time."""
    train(tiny_cfg(tmp_path / "run", max_steps=10), tiny_corpus)
    res = train(tiny_cfg(tmp_path / "run", max_steps=25), tiny_corpus)
    segs = res["segments"]
    assert [(s["first_step"], s["last_step"]) for s in segs] == [(0, 10), (10, 25)]
    assert all(s["precision"] == "float32" and s["machine"]["cores"] for s in segs)
    assert sum(s["train_seconds"] for s in segs) == pytest.approx(res["train_seconds"], abs=1e-2)
    assert sum(s["train_tokens"] for s in segs) == res["train_tokens"]
    assert all(s["tokens_per_s"] > 0 for s in segs)
    with open(tmp_path / "run" / "segments.json") as f:
        assert json.load(f) == segs


@pytest.mark.parametrize("given, expected", [("auto", "float32"), ("mixed_bfloat16",
                                                                    "mixed_bfloat16")])
def test_a_resumed_run_keeps_its_precision_unless_told(tiny_corpus, tmp_path, capsys, given,
                                                       expected):
    """A run started in float32 that resumes where `auto` means bf16 stays float32 with a
    notice; an explicit --precision changes it, with a notice and a new record."""
    train(tiny_cfg(tmp_path / "run", max_steps=3), tiny_corpus)
    capsys.readouterr()
    cfg = tiny_cfg(tmp_path / "run", max_steps=6, precision="mixed_bfloat16")
    cfg.precision_given = given  # as from_flags leaves it when auto resolved to bf16 here
    t = open_run(cfg, tiny_corpus)
    assert t.cfg.precision == expected
    assert t.task.model.dtype_policy.name == expected
    notice = [line for line in capsys.readouterr().out.splitlines() if "notice" in line]
    assert len(notice) == 1 and "float32" in notice[0]
    with open(tmp_path / "run" / "flags.json") as f:
        assert json.load(f)["precision"] == expected


def test_the_training_clock_leaves_out_the_time_the_process_was_stopped():
    """SIGSTOP / SIGCONT (a pause to free the cores for a measurement): the seconds the
    process was stopped are not training seconds."""
    import signal
    import subprocess
    import textwrap
    code = textwrap.dedent("""
        import time
        from tfawd.core.clock import clock
        c = clock(); t0, w0 = c.now(), time.perf_counter()
        print("ready", flush=True)
        while time.perf_counter() - w0 < 12:
            time.sleep(0.1)
        print(round(time.perf_counter() - w0, 1), round(c.now() - t0, 1), flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1)
    proc.send_signal(signal.SIGSTOP)
    time.sleep(7)
    proc.send_signal(signal.SIGCONT)
    wall, clocked = map(float, proc.communicate(timeout=60)[0].split())
    assert wall >= 12
    assert clocked == pytest.approx(wall - 7, abs=1.5)
