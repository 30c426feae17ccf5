"""The run driver, the family registry and the run-level flags (issue 26): one set of defaults
per family, every loop flag meaning the same in every family, and a new family plugging in
without touching main.py or tfawd/core."""
import dataclasses
import sys

import pytest
from absl import flags

from tfawd import families
from tfawd.core import registry
from tfawd.core.driver import loop_config
from tfawd.core.flags import RUN_FLAGS, RunFlags, config_from_flags, family_default
from tfawd.lm.config import LMConfig
from tfawd.speech.config import SpeechConfig


def parsed(*args):
    fv = flags.FlagValues()
    found = families.define_flags(fv)
    fv([sys.argv[0], *args])
    return fv, found


def test_the_flags_left_unset_give_each_family_its_config_defaults():
    """`main.py --model=las` and `SpeechConfig()` agree (they did not: lr 20 vs 1e-3, clip
    0.25 vs 5, seed 1111 vs 0), and so do `--model=lstm` and `LMConfig()`."""
    for model, cls in (("lstm", LMConfig), ("awd_lstm", LMConfig), ("las", SpeechConfig)):
        fv, _ = parsed(f"--model={model}")
        got = registry.family_of(model).from_flags(fv)
        assert isinstance(got, cls)
        want = cls(model=model)
        for f in dataclasses.fields(cls):
            if f.name not in ("explicit", "data_dir", "precision", "precision_given"):
                assert getattr(got, f.name) == getattr(want, f.name), f.name
    assert SpeechConfig().lr == 1e-3 and LMConfig().lr == 20.0


def test_a_run_flag_is_declared_once_and_its_help_names_each_familys_default():
    fv, found = parsed()
    assert {f.name for f in found} == {"language model", "speech"}
    assert fv["lr"].default is None  # the families differ: each takes its own
    assert "language model 20.0" in fv["lr"].help and "speech 0.001" in fv["lr"].help
    assert fv["max_steps"].default == 0  # the families agree: a plain default
    for name in RUN_FLAGS:
        assert name in fv, name


def test_given_flags_win_and_are_listed_as_explicit():
    fv, _ = parsed("--model=las", "--lr=0.01", "--checkpoint_every=7")
    cfg = registry.family_of("las").from_flags(fv)
    assert (cfg.lr, cfg.checkpoint_every) == (0.01, 7)
    assert set(cfg.explicit) == {"model", "lr", "checkpoint_every"}


def test_every_loop_flag_means_the_same_in_both_families():
    """Checkpoint cadence, profiling and bounds reach the loop alike (the speech trainer used
    to ignore --checkpoint_every and --profile_steps)."""
    run = dict(model_dir="/tmp/r", max_epochs=3, max_steps=11, time_budget_min=2.5,
               log_every=4, checkpoint_every=5, checkpoint_every_min=1.5, profile_steps="2,4")
    lm, speech = loop_config(LMConfig(**run)), loop_config(SpeechConfig(**run))
    assert dataclasses.replace(lm, precision="float32") == speech
    assert speech.profile == (2, 4) and speech.checkpoint_every == 5
    assert speech.checkpoint_minutes == 1.5


def test_a_data_set_of_another_family_and_a_model_of_none_are_refused():
    with pytest.raises(KeyError, match="--model=gpt belongs to no registered family"):
        registry.family_of("gpt")
    assert "an4" in registry.family_of("las").datasets
    assert "an4" not in registry.family_of("lstm").datasets


def test_two_families_cannot_claim_one_model():
    families.families()
    lm = registry.family_of("lstm")
    with pytest.raises(ValueError, match="lstm"):
        registry.register(dataclasses.replace(lm, name="copy"))


@dataclasses.dataclass
class ToyConfig(RunFlags):
    model: str = family_default("model", "toy")
    dataset: str = family_default("dataset", "toy_data")
    lr: float = family_default("lr", 0.5)


def test_a_new_family_plugs_in_with_one_registration(monkeypatch):
    """A family is a config class, its flags and its modes: registered, it gets the run-level
    flags with its defaults and dispatch by --model, with no change to main.py or core."""
    calls = []
    toy = registry.Family(
        name="toy", models=("toy",), datasets=("toy_data",), config=ToyConfig,
        define_flags=lambda fv: None,
        from_flags=lambda fv: config_from_flags(ToyConfig, fv),
        modes={"train": lambda cfg, fv, dist: calls.append(cfg)}, training_modes=("train",),
        load=lambda model_dir: model_dir)
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    families.families()
    registry.register(toy)
    fv, found = parsed("--model=toy", "--max_steps=3")
    assert [f.name for f in found][-1] == "toy"
    family = registry.family_of(fv["model"].value)
    family.modes["train"](family.from_flags(fv), fv, None)
    assert calls[0].lr == 0.5 and calls[0].max_steps == 3 and calls[0].dataset == "toy_data"
    assert "toy 0.5" in fv["lr"].help
