"""The flag machinery shared by the model families: a dataclass field carries its flag's help
text and choices, and `define_fields` turns fields into absl flags.

Library code takes a config dataclass (`tfawd.lm.config.LMConfig`,
`tfawd.speech.config.SpeechConfig`); only `main.py` touches absl.
"""
import dataclasses
import os

from absl import flags

from tfawd.core import files
from tfawd.core.run_dir import RunDir
from tfawd.core.run_guard import RunError

MODELS = ("lstm", "awd_lstm", "las")  # --model: the language models, then the recogniser
SPEECH_DATASETS = ("spoken_digits", "espeak", "manifest", "npy")  # --dataset for --model=las


def field(default, help_text, choices=None):
    """A config field that becomes a flag: `choices` makes it an enum."""
    return dataclasses.field(default=default, metadata={"help": help_text, "choices": choices})


def define_fields(fields, fv):
    """One absl flag per dataclass field: enum with choices, else by the field's type."""
    for f in fields:
        name, default, meta = f.name, f.default, f.metadata
        if meta.get("flag") is False:
            continue
        if meta["choices"]:
            flags.DEFINE_enum(name, default, meta["choices"], meta["help"], flag_values=fv)
        elif f.type is bool:
            flags.DEFINE_bool(name, default, meta["help"], flag_values=fv)
        elif f.type is int:
            flags.DEFINE_integer(name, default, meta["help"], flag_values=fv)
        elif f.type is float:
            flags.DEFINE_float(name, default, meta["help"], flag_values=fv)
        else:
            flags.DEFINE_string(name, default, meta["help"], flag_values=fv)


# Flags a trained run's record never sets for a later command: where things are (this
# machine's folders), what the command is, and the precision (`auto` is this machine's).
NOT_ADOPTED = ("mode", "model_dir", "data_dir", "export_dir", "export_name", "precision",
               "explicit", "espeak_dir")


def recorded_flags(model_dir: str) -> dict:
    """The flags the run in `model_dir` trained with: its results.json's `flags` (all of
    them), else its flags.json (those recorded when it started), else none."""
    run = RunDir(model_dir)
    for path, key in ((run.results, "flags"), (run.flags, None)):
        if os.path.exists(path):
            record = files.read_json(path, fix="restore it from a copy of the run folder, or "
                                     "remove it and give the run's flags on the command line")
            if not isinstance(record, dict) or (key and not isinstance(record.get(key), dict)):
                raise RunError(f"{path} is damaged (no flags in it); restore it from a copy of "
                               f"the run folder")
            return record.get(key, {}) if key else record
    return {}


def adopt_recorded_flags(fv, model_dir: str) -> list:
    """A trained run describes itself: every flag not given (on the command line or in a
    flagfile) takes the value the run in `model_dir` trained with, so evaluating, exporting
    or predicting with a run needs `--model_dir` only (its family, data and splits included;
    the architecture is in its model.json). Returns the names adopted."""
    adopted = []
    for name, value in recorded_flags(model_dir).items():
        if (name in fv and name not in NOT_ADOPTED and not fv[name].present
                and value is not None and fv[name].value != value):
            fv[name].value = value
            adopted.append(name)
    return adopted
