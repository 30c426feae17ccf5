"""AWD-LSTM in the training loop: the model, AR/TAR in the step, per-window lr scaling, the
NT-ASGD schedule at epoch ends, and fine-tuning."""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.test_training import tiny_cfg
from tfawd.core.clock import clock
from tfawd.lm.models import AwdLstmModel
from tfawd.lm.training import finetune, open_run, train


def awd_cfg(model_dir, **kw):
    base = dict(model="awd_lstm", emsize=8, nhid=12, nlayers=3, dropout=0.1, dropouth=0.1,
                dropouti=0.1, dropoute=0.05, wdrop=0.2, alpha=2.0, beta=1.0, wdecay=1.2e-6,
                optimizer="ntasgd", nonmono=2, lr=5.0, lr_decay=1.0)
    base.update(kw)
    return tiny_cfg(model_dir, **base)


def test_awd_model_is_tied_and_shaped_as_the_paper():
    model = AwdLstmModel(50, emsize=8, nhid=12, nlayers=3)
    logits, states, acts = model(tf.zeros([2, 5], tf.int32), model.initial_state(2),
                                 return_activations=True)
    assert logits.shape == (2, 5, 50)
    assert [s[0].shape[-1] for s in states] == [12, 12, 8]  # last layer = embedding size
    assert acts["raw_last"].shape == acts["dropped_last"].shape == (2, 5, 8)
    names = [v.path for v in model.trainable_variables]
    assert not any("decoder" in n and "bias" not in n for n in names)  # no separate matrix
    with tf.GradientTape() as tape:  # the decoder's gradient reaches the embedding matrix
        logits, _ = model(tf.zeros([1, 1], tf.int32), model.initial_state(1))
        loss = logits[0, 0, 7]
    grad = tf.convert_to_tensor(tape.gradient(loss, model.embedding.embeddings))
    assert float(tf.norm(grad[7])) > 0


def test_ar_and_tar_enter_the_gradient(tiny_corpus, tmp_path):
    x = tf.constant(tiny_corpus.ids["train"][:4 * 8].reshape(4, 8))
    y = tf.constant(tiny_corpus.ids["train"][1:4 * 8 + 1].reshape(4, 8))
    weights = []
    for i, (alpha, beta) in enumerate([(0.0, 0.0), (0.0, 0.0), (50.0, 0.0), (0.0, 50.0)]):
        t = open_run(awd_cfg(tmp_path / str(i), alpha=alpha, beta=beta, seed=1), tiny_corpus)
        t.task.train_step(x, y)
        weights.append(t.model.rnns[-1].kernel.numpy())
    # the control: the same config and seed gives the same step, so a difference below is AR's
    # or TAR's and not the run's randomness
    np.testing.assert_array_equal(weights[0], weights[1])
    assert not np.allclose(weights[0], weights[2]) and not np.allclose(weights[0], weights[3])


def test_ar_and_tar_in_the_step_are_their_formulas(tiny_corpus, tmp_path):
    """One compiled SGD step (no clipping, decay or lr scaling) equals one written out here:
    gradient of mean NLL + alpha * mean(dropped last output^2) + beta * mean((raw h_t -
    raw h_{t-1})^2) (AWD-LSTM 4.6), with the dropout masks the step draws (the seed states are
    put back after the reference ran). AR on the raw output, TAR on the dropped one, a sum
    instead of a mean or a missing alpha/beta each move some weight by > 1e-4 here."""
    alpha, beta = 2.0, 1.0
    t = open_run(awd_cfg(tmp_path / "run", alpha=alpha, beta=beta, optimizer="sgd", wdecay=0.0,
                        clip=0.0, variable_bptt=False), tiny_corpus)
    model, lr = t.model, float(t.task.lm.lr)
    x = tf.constant(tiny_corpus.ids["train"][:4 * 8].reshape(4, 8))
    y = tf.constant(tiny_corpus.ids["train"][1:4 * 8 + 1].reshape(4, 8))

    @tf.function  # the fused decoder NLL's gradient is written for graphs
    def gradients():
        with tf.GradientTape() as tape:
            nll, _, acts = model(x, model.initial_state(4), training=True, targets=y,
                                 return_activations=True)
            dropped, raw = acts["dropped_last"], acts["raw_last"]
            total = (tf.reduce_mean(nll) + alpha * tf.reduce_mean(tf.square(dropped))
                     + beta * tf.reduce_mean(tf.square(raw[:, 1:] - raw[:, :-1])))
        return [tf.convert_to_tensor(g) for g in tape.gradient(total, model.trainable_variables)]

    saved = [v.numpy() for v in model.variables]  # the weights and the dropout seed states
    want = [v.numpy() - lr * g.numpy() for v, g in zip(model.trainable_variables, gradients(),
                                                        strict=True)]
    for v, value in zip(model.variables, saved, strict=True):
        v.assign(value)
    t.task.train_step(x, y)
    for v, w in zip(model.trainable_variables, want, strict=True):
        np.testing.assert_allclose(v.numpy(), w, rtol=1e-5, atol=1e-6, err_msg=v.path)


@pytest.mark.parametrize("variable, length, expected", [(True, 4, 2.5), (True, 8, 5.0),
                                                        (False, 4, 5.0)])
def test_learning_rate_is_scaled_by_window_length(tiny_corpus, tmp_path, variable, length,
                                                  expected):
    t = open_run(awd_cfg(tmp_path / "run", bptt=8, lr=5.0, variable_bptt=variable), tiny_corpus)
    ids = tiny_corpus.ids["train"]
    t.task.train_step(tf.constant(ids[:4 * length].reshape(4, length)),
                 tf.constant(ids[1:4 * length + 1].reshape(4, length)))
    assert float(t.task.optimizer.learning_rate) == pytest.approx(expected)
    assert float(t.task.lm.lr) == 5.0  # the base rate is untouched


def test_ntasgd_schedule_switches_by_the_rule_and_then_validates_averaged(tiny_corpus, tmp_path,
                                                                         monkeypatch):
    t = open_run(awd_cfg(tmp_path / "run", nonmono=2), tiny_corpus)
    scripted = iter([5.0, 4.0, 3.0, 3.5, 4.5, 4.6, 2.0])
    seen = []

    def validate(*args):
        seen.append(t.task.averaging)
        nll = next(scripted)
        return {"nll": nll, "ppl": float(np.exp(nll)), "seconds": 0.0}

    monkeypatch.setattr(t.task.evaluator, "evaluate", validate)
    for _ in range(7):
        t.end_epoch()
    # check 5 (4.5) is worse than min(5.0, 4.0), the best but the last 2 -> switch after it
    assert seen == [False] * 5 + [True] * 2
    events = [h["event"] for h in t.history]
    assert events[4] == "switched to averaged SGD" and events.count("switched to averaged SGD") == 1
    assert float(t.task.lm.lr) == 5.0  # NT-ASGD never anneals
    assert float(t.state.best_score) == 2.0


def test_ntasgd_switches_when_the_time_budget_is_ending(tiny_corpus, tmp_path, monkeypatch):
    """--average_last_min: a run still improving every epoch averages its last minutes."""
    t = open_run(awd_cfg(tmp_path / "run", nonmono=2, time_budget_min=60, average_last_min=10),
                tiny_corpus)
    scripted, left = iter([5.0, 4.0, 3.0, 2.5, 2.4]), iter([40.0, 25.0, 10.5, 9.5, 3.0])
    monkeypatch.setattr(t.task.evaluator, "evaluate", lambda *a: {
        "nll": next(scripted), "ppl": 1.0, "seconds": 0.0})
    monkeypatch.setattr(t, "minutes_left", lambda: next(left))
    seen = []
    for _ in range(5):
        seen.append(t.task.averaging)
        t.end_epoch()
    assert seen == [False] * 4 + [True]  # validation always improved: the budget decided
    assert [h["event"] for h in t.history][3] == \
        "switched to averaged SGD (9.5 min of the budget left)"


def test_budget_averaging_is_off_by_default(tiny_corpus, tmp_path, monkeypatch):
    t = open_run(awd_cfg(tmp_path / "run", nonmono=2, time_budget_min=60), tiny_corpus)
    scripted = iter([5.0, 4.0, 3.0])
    monkeypatch.setattr(t.task.evaluator, "evaluate", lambda *a: {
        "nll": next(scripted), "ppl": 1.0, "seconds": 0.0})
    monkeypatch.setattr(t, "minutes_left", lambda: 0.5)
    for _ in range(3):
        t.end_epoch()
    assert not t.task.averaging


def test_loop_minutes_left_counts_down_the_budget(tiny_corpus, tmp_path):
    t = open_run(awd_cfg(tmp_path / "run", time_budget_min=30), tiny_corpus)
    assert 29.9 < t.minutes_left() <= 30
    assert open_run(awd_cfg(tmp_path / "r2"), tiny_corpus).minutes_left() is None


def test_the_budget_leaves_out_the_time_the_process_was_stopped(tiny_corpus, tmp_path,
                                                                 monkeypatch):
    """A run paused (SIGSTOP) for a measurement keeps the training minutes it was given:
    10 minutes since run() began, 4 of them stopped, leave 24 of a 30-minute budget."""
    t = open_run(awd_cfg(tmp_path / "run", time_budget_min=30), tiny_corpus)
    now = clock().now()
    t._start = now - 600
    assert t.minutes_left() == pytest.approx(20, abs=0.05)
    assert t._stop_reason(now - 1801) == "time_budget"
    monkeypatch.setattr(clock(), "paused", clock().paused + 240)  # 4 minutes stopped
    assert t.minutes_left() == pytest.approx(24, abs=0.05)
    assert t._stop_reason(now - 1801) is None


def test_training_then_finetuning_keeps_the_better_model(tiny_corpus, tmp_path):
    sizes = dict(emsize=16, nhid=32, lr=30.0, nonmono=1)
    trained = train(awd_cfg(tmp_path / "run", max_epochs=3, **sizes), tiny_corpus)
    assert trained["val_ppl"] < 28  # uniform is 31
    tuned = finetune(awd_cfg(tmp_path / "run", max_epochs=4, **sizes), tiny_corpus)
    assert tuned["val_ppl"] <= trained["val_ppl"] * (1 + 1e-6)
    results = json.load(open(tmp_path / "run" / "finetune" / "results.json"))
    assert results["flags"]["optimizer"] == "ntasgd"
    history = json.load(open(tmp_path / "run" / "finetune" / "history.json"))
    assert all(h["averaged"] for h in history if "val_loss" in h)
    assert results["stopped"] in ("converged", "max_epochs")


def test_steps_are_traced_once_whatever_the_window_lengths(tiny_corpus, tmp_path):
    """Variable-length BPTT must not retrace the training or evaluation step per length."""
    from tfawd.lm.evaluation import Evaluator
    t = open_run(awd_cfg(tmp_path / "run", bptt=8), tiny_corpus)
    ids = tiny_corpus.ids["train"]
    for length in (3, 8, 11, 5):
        t.task.train_step(tf.constant(ids[:4 * length].reshape(4, length)),
                     tf.constant(ids[1:4 * length + 1].reshape(4, length)))
    assert t.task.train_step.experimental_get_tracing_count() == 1
    evaluator = Evaluator(t.model)
    for bptt in (3, 7):
        evaluator.evaluate(tiny_corpus.ids["valid"], batch_size=2, bptt=bptt)
    assert evaluator._step(2).experimental_get_tracing_count() == 1


@pytest.mark.parametrize("model", ["awd_lstm", "lstm"])
def test_mixed_bfloat16_keeps_float32_weights_state_and_loss(tiny_corpus, tmp_path, model):
    from tfawd.lm.models import build_model
    keras.utils.set_random_seed(0)
    kw = dict(model=model, emsize=8, nhid=8 if model == "lstm" else 12)
    fp32 = build_model(awd_cfg(tmp_path / "a", **kw), 30)
    bf16 = build_model(awd_cfg(tmp_path / "b", precision="mixed_bfloat16", **kw), 30)
    assert all(v.dtype == "float32" for v in bf16.trainable_variables)
    assert bf16.rnns[0].compute_dtype == "bfloat16"
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left alone
    own_kernel = bf16.rnns[-1].kernel.numpy()  # its own initialisation, for the check below
    for a, b in zip(fp32.variables, bf16.variables, strict=True):
        b.assign(a)
    x = tf.constant(tiny_corpus.ids["train"][:4 * 6].reshape(4, 6))
    (l32, s32), (l16, s16) = (m(x, m.initial_state(4)) for m in (fp32, bf16))
    assert all(t.dtype == tf.float32 for layer in s16 for t in layer)
    # bfloat16 keeps 8 significant bits: one rounding is off by at most 2^-8 of the value.
    # These logits are small (|l| < 0.05 for awd_lstm, < 1e-3 for lstm), so the tolerance is
    # in steps of 2^-8 of their largest magnitude: 4 of them for the few roundings in a row
    # (about 2 are seen); an absolute 0.05 would have passed any logits at all.
    step = 2.0 ** -8 * float(np.abs(l32).max())
    np.testing.assert_allclose(tf.cast(l16, tf.float32), l32, rtol=0, atol=4 * step)
    bf16.rnns[-1].kernel.assign(own_kernel)  # one weight not copied: the tolerance sees it
    wrong = tf.cast(bf16(x, bf16.initial_state(4))[0], tf.float32)
    assert np.abs(wrong - l32).max() > 4 * step
    y = tf.constant(tiny_corpus.ids["train"][1:4 * 6 + 1].reshape(4, 6))
    losses = {}
    for precision in ("float32", "mixed_bfloat16"):  # one seed: same weights, same masks
        t = open_run(awd_cfg(tmp_path / precision, precision=precision, **kw), tiny_corpus)
        loss, norm = t.task.train_step(x, y)
        assert loss.dtype == tf.float32 and np.isfinite(float(loss)) and np.isfinite(float(norm))
        losses[precision] = float(loss)
    # the float32 run's loss to 1e-4 (seen: < 2e-5); other masks or weights move awd_lstm's by
    # ~2e-3 (lstm's logits are too small for its loss to tell: ~3e-5)
    assert losses["mixed_bfloat16"] == pytest.approx(losses["float32"], abs=1e-4)


def test_ntasgd_switches_at_the_scheduled_epoch_at_the_latest(tiny_corpus, tmp_path,
                                                              monkeypatch):
    """--average_after_epochs=3: validation improving every epoch, the switch comes at the end
    of epoch 3; without the flag the same scores never switch."""
    seen = {}
    for after in (3, 0):
        t = open_run(awd_cfg(tmp_path / str(after), nonmono=2, average_after_epochs=after),
                    tiny_corpus)
        scripted = iter([5.0, 4.0, 3.0, 2.5, 2.4])
        monkeypatch.setattr(t.task.evaluator, "evaluate", lambda *a, s=scripted: {
            "nll": next(s), "ppl": 1.0, "seconds": 0.0})
        seen[after] = []
        for _ in range(5):
            t.end_epoch()
            seen[after].append(t.task.averaging)
    assert seen[3] == [False, False, True, True, True]
    assert seen[0] == [False] * 5
