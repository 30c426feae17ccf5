"""The LAS run end to end on a few real spoken-digit utterances: outputs, resume, schedule."""
import dataclasses
import json
import os

import numpy as np
import pytest

from pipelines.speech_features import CharVocab
from tfawd.core.run_guard import RunError
from tfawd.speech import evaluation as speech_evaluation
from tfawd.speech import las
from tfawd.speech import training as speech_training
from tfawd.speech.config import SpeechConfig
from tfawd.speech.inference import trained_model_flags


def tiny_cfg(data_dir, model_dir, **kw):
    base = dict(data_dir=data_dir, model_dir=str(model_dir), train_utterances=24,
                eval_utterances=12, max_digits=2, listener_units=16, speller_units=24,
                attention_dim=12, char_embed_dim=8, frame_stack=3, batch_size=8, max_epochs=1,
                log_every=1, max_decode_len=20, beam_size=2, seed=5)
    base.update(kw)
    return SpeechConfig(**base)


def test_teacher_forcing_schedule_is_linear_then_flat():
    cfg = SpeechConfig(teacher_forcing=1.0, teacher_forcing_final=0.8, teacher_forcing_epochs=4)
    rates = [speech_training.teacher_forcing_rate(cfg, e) for e in range(6)]
    np.testing.assert_allclose(rates, [1.0, 0.95, 0.9, 0.85, 0.8, 0.8])


def test_encoder_frames_follow_stacking_and_pyramid():
    frames = np.array([1, 6, 7, 100])
    np.testing.assert_array_equal(las.encoder_frames(frames, 3, 0), [1, 2, 3, 34])
    np.testing.assert_array_equal(las.encoder_frames(frames, 3, 1), [1, 1, 2, 17])


def test_a_run_writes_its_results_and_resumes(data_dir, tmp_path):
    cfg = tiny_cfg(data_dir, tmp_path / "run", max_steps=2, max_epochs=2, attention_window=4,
                   guided_attention=5.0, max_chars_per_frame=0.4, lr=0.004, lr_epoch_decay=0.5)
    first = speech_training.train(cfg)
    assert first["stopped"] == "max_steps" and first["steps"] == 2
    # resumed: continues from step 2 to the end of the second epoch
    second = speech_training.train(dataclasses.replace(cfg, max_steps=0))
    assert second["stopped"] == "max_epochs" and second["epochs_completed"] == 2
    history = json.load(open(tmp_path / "run" / "history.json"))
    steps = [h["step"] for h in history if "train_loss" in h]
    assert steps == sorted(set(steps)) and steps[:2] == [1, 2]
    assert all(h["train_guided_attention"] > 0 for h in history if "train_loss" in h)
    lrs = {h["epoch"]: h["lr"] for h in history if "train_loss" in h}
    assert lrs == {1: pytest.approx(0.004), 2: pytest.approx(0.002)}  # also after the resume
    results = json.load(open(tmp_path / "run" / "results.json"))
    for split in ("valid", "test", "heldout"):
        for decoder in ("greedy", "beam"):
            scores = results[f"{split}_{decoder}"]
            assert 0 <= scores["cer"] and scores["utterances"] == 12
    assert 0 <= results["diagonality_first10"]["monotonic"] <= 1
    assert results["model"] == "las" and results["flags"]["frame_stack"] == 3
    assert results["commands"] == [results["command"]] * 2  # both invocations that trained it
    assert results["wall_seconds_this_run"] > 0
    assert results["flags"]["attention_window"] == 4
    attention = np.load(tmp_path / "run" / "attention.npy")
    assert attention.shape[0] == 10
    np.testing.assert_allclose(attention.sum(-1)[attention.sum(-1) > 0], 1, rtol=1e-4)
    assert len(os.listdir(tmp_path / "run" / "attention")) == 10
    assert os.path.exists(tmp_path / "run" / "loss_curve.png")


def test_evaluating_an_untrained_folder_is_a_clear_error(tmp_path):
    """Said before any data is read (--data_dir names no folder here)."""
    with pytest.raises(RuntimeError, match="train first"):
        speech_evaluation.evaluate(tiny_cfg(str(tmp_path / "no_data"), tmp_path / "empty"))
    assert not (tmp_path / "no_data").exists()


def test_a_trained_run_is_evaluated_and_exported_with_its_own_model_flags(tmp_path):
    """A run made before --attention_window existed (and before model.json) keeps decoding
    without a window, and its network sizes are used when no flag names them."""
    (tmp_path / "results.json").write_text(json.dumps(
        {"flags": {"listener_units": 64, "frame_stack": 3, "speller_units": 96}}))
    cfg = SpeechConfig(model_dir=str(tmp_path), listener_units=128, attention_window=16,
                       max_chars_per_frame=0.4, beam_size=7, explicit=("beam_size",))
    used = trained_model_flags(cfg)
    assert (used.listener_units, used.speller_units, used.frame_stack) == (64, 96, 3)
    assert used.attention_window == 0 and used.max_chars_per_frame == 0  # the run predates them
    assert used.beam_size == 7  # decoding search settings stay the caller's
    fresh = SpeechConfig(model_dir=str(tmp_path / "new"), attention_window=16)
    assert trained_model_flags(fresh) is fresh


def test_a_conflicting_architecture_flag_is_refused_naming_both_values(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"class": "ListenAttendSpell", "config": {
        "listener_units": 64, "frame_stack": 3, "pyramid_layers": 0, "speller_units": 96,
        "attention_dim": 32, "embed_dim": 8, "attention_window": 0,
        "attention_window_back": 3, "max_chars_per_frame": 0.0}}))
    cfg = SpeechConfig(model_dir=str(tmp_path), listener_units=128, explicit=("listener_units",))
    with pytest.raises(RunError, match=r"--listener_units=64 \(now 128\)"):
        trained_model_flags(cfg)
    same = trained_model_flags(dataclasses.replace(cfg, listener_units=64))
    assert (same.speller_units, same.char_embed_dim, same.frame_stack) == (96, 8, 3)


def test_with_ema_the_best_weights_are_the_moving_average(data_dir, tmp_path):
    trainer = speech_training.open_run(tiny_cfg(data_dir, tmp_path / "run", ema_decay=0.9))
    assert trainer.run() == "max_epochs"
    variables = trainer.model.trainable_variables
    trained = [v.numpy() for v in variables]
    with trainer.task.averaged_weights():
        averaged = [v.numpy() for v in variables]
    assert all(np.array_equal(v.numpy(), t) for v, t in zip(variables, trained))  # put back
    assert not all(np.allclose(a, t) for a, t in zip(averaged, trained))
    trainer.best.checkpoint.restore(trainer.best.latest_checkpoint).assert_consumed()
    for v, a in zip(variables, averaged):  # validated and kept as best: the average
        np.testing.assert_array_equal(v.numpy(), a)


def test_load_gives_python_callers_a_recogniser(data_dir, tmp_path):
    from tfawd import speech
    speech_training.train(tiny_cfg(data_dir, tmp_path / "run", max_steps=3))
    rec = speech.load(str(tmp_path / "run"))  # no flags: the architecture is in model.json
    wavs = sorted(os.path.join(data_dir, "fsdd", "recordings", f)
                  for f in os.listdir(os.path.join(data_dir, "fsdd", "recordings")))[:2]
    both = rec.transcribe(wavs)  # two lengths in one padded batch
    assert both == [rec.transcribe([w])[0] for w in wavs] and all(isinstance(t, str) for t in both)
    with pytest.raises(RunError, match=r"--listener_units=16 \(now 32\)"):
        speech.load(str(tmp_path / "run"), listener_units=32)


def test_a_joint_ctc_run_logs_its_ctc_loss_and_evaluates_with_its_own_head(data_dir, tmp_path):
    """--ctc_weight trains a CTC head beside the speller (history: train_ctc); the run's
    model.json carries it, so evaluating the folder without the flag rebuilds the head and
    restores its weights."""
    cfg = tiny_cfg(data_dir, tmp_path / "run", max_steps=2, ctc_weight=0.3)
    speech_training.train(cfg)
    history = json.load(open(tmp_path / "run" / "history.json"))
    assert all(h["train_ctc"] > 0 for h in history if "train_loss" in h)
    plain = dataclasses.replace(cfg, ctc_weight=0.0, explicit=())
    assert trained_model_flags(plain).ctc_weight == 0.3
    scores = speech_evaluation.evaluate(plain)
    assert 0 <= scores["valid_greedy"]["cer"]
    # its CTC head decodes alone, and inside the beam search (tiny_cfg's beam of 2)
    assert {"valid_ctc", "valid_joint", "test_ctc", "test_joint"} <= set(scores)


def test_global_feature_normalisation_is_measured_on_train_and_saved_with_the_weights(
        data_dir, tmp_path):
    """--feature_norm=global: the model holds the training split's per-band mean and std
    (in its checkpoints), the data is scaled by them, and evaluating the folder later uses the
    saved ones (the same CER as the run's own final evaluation)."""
    from pipelines import speech_features
    from tfawd.speech.data import featurized, sources
    cfg = tiny_cfg(data_dir, tmp_path / "run", max_steps=2, feature_norm="global")
    loop = speech_training.open_run(cfg)
    srcs, rate = sources(cfg)
    raw = speech_features.featurize(rate, loop.task.vocab, raw=True)
    mean, std = speech_features.feature_stats(srcs["train"].map(raw))
    np.testing.assert_allclose(loop.model.feature_mean.numpy(), mean, rtol=1e-5)
    np.testing.assert_allclose(loop.model.feature_std.numpy(), std, rtol=1e-5)
    frames = np.concatenate([ex["features"] for ex in loop.task.data["train"].as_numpy_iterator()])
    np.testing.assert_allclose(frames.mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(frames.std(0), 1, atol=1e-3)
    del loop
    speech_training.train(cfg)
    final = json.load(open(tmp_path / "run" / "results.json"))
    assert json.load(open(tmp_path / "run" / "model.json"))["config"]["feature_norm"] == "global"
    scores = speech_evaluation.evaluate(dataclasses.replace(cfg, feature_norm="utterance",
                                                            explicit=()))
    assert scores["valid_greedy"]["cer"] == final["valid_greedy"]["cer"]
    _, _, stats = featurized(cfg, CharVocab(), (mean + 1, std))
    assert stats[0][0] == mean[0] + 1  # given statistics are used, not measured again


def test_an4_cepstra_run_keeps_its_input_form_for_evaluation(data_dir, tmp_path):
    """--features=cepstra trains on 13 numbers a frame; the folder remembers it (model.json),
    so evaluating it without the flag rebuilds the 13-band model and scores as the run did."""
    cfg = tiny_cfg(data_dir, tmp_path / "run", dataset="an4", features="cepstra",
                   feature_norm="global", max_steps=2, beam_size=1, max_decode_len=8)
    final = speech_training.train(cfg)
    config = json.load(open(tmp_path / "run" / "model.json"))["config"]
    assert (config["features"], config["feature_dim"]) == ("cepstra", 13)
    again = dataclasses.replace(cfg, features="logmel", feature_norm="utterance", explicit=())
    assert trained_model_flags(again).features == "cepstra"
    scores = speech_evaluation.evaluate(again)
    assert scores["valid_greedy"]["cer"] == final["valid_greedy"]["cer"]
    with pytest.raises(RunError, match="features"):  # a conflicting flag given by the user
        trained_model_flags(dataclasses.replace(cfg, features="logmel", explicit=("features",)))
