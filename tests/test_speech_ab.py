"""benchmarks/speech_ab.py: arms of an A/B parsed from one flag, and the choice made on
validation only (issue 29: "each behind a flag with its default chosen by measurement")."""
import json
import pathlib
import sys

import pytest
from absl import app

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import common  # noqa: E402
import speech_ab  # noqa: E402


def test_arms_are_names_with_their_own_flags():
    arms = speech_ab.parse_arms("logmel=; cepstra=--features=cepstra;vtlp=--vtlp=0.1 --seed=3")
    assert arms == {"logmel": [], "cepstra": ["--features=cepstra"],
                    "vtlp": ["--vtlp=0.1", "--seed=3"]}
    assert list(arms) == ["logmel", "cepstra", "vtlp"]


@pytest.mark.parametrize("bad", ["a=", "a=;a=--x", "a=;--x", "=--x;b="])
def test_bad_arms_are_usage_errors(bad):
    with pytest.raises(app.UsageError, match="--arms"):
        speech_ab.parse_arms(bad)


def test_the_choice_is_the_lowest_validation_cer_never_a_test_score():
    runs = {"a": {"valid_joint": {"cer": 0.06}, "test_joint": {"cer": 0.01}},
            "b": {"valid_joint": {"cer": 0.05}, "test_joint": {"cer": 0.09}}}
    assert speech_ab.choose(runs, "valid_joint") == "b"
    with pytest.raises(app.UsageError, match="validation"):
        speech_ab.choose(runs, "test_joint")
    with pytest.raises(SystemExit, match="valid_ctc"):
        speech_ab.choose(runs, "valid_ctc")


def test_a_run_is_summarised_by_its_scores_and_flags(tmp_path):
    res = {"command": "main.py ...", "epochs_completed": 7, "flags": {"seed": 1},
           "valid_joint": {"cer": 0.05, "wer": 0.1, "utterances": 102, "examples": ["x"]},
           "test_greedy": {"cer": 0.2, "wer": 0.3, "utterances": 130},
           "test_joint_per_speaker_cer": {"x": 0.1}}
    (tmp_path / "results.json").write_text(json.dumps(res))
    out = speech_ab.summary(common.finished_run(str(tmp_path), 1), ["--vtlp=0.1"])
    assert out["valid_joint"] == {"cer": 0.05, "wer": 0.1, "utterances": 102}
    assert out["arm_flags"] == ["--vtlp=0.1"] and out["epochs_completed"] == 7
    assert "test_joint_per_speaker_cer" not in out and "flags" not in out
    assert common.finished_run(str(tmp_path / "absent"), 1) is None
