"""The model families of this project, one registration each (`tfawd.core.registry`): a
module that calls `registry.register(Family(...))` when imported. Adding a family: its folder
with such a module, and one line here."""
import importlib

from tfawd.core import registry

REGISTERED = (
    "tfawd.lm.family",  # language models on text corpora: lstm, awd_lstm
    "tfawd.speech.family",  # the Listen-Attend-Spell recogniser: las
)


def families() -> list:
    """Every family of REGISTERED (imported, so registered), in that order."""
    for module in REGISTERED:
        importlib.import_module(module)
    return registry.registered()


def define_flags(fv) -> list:
    """The run-level flags once (`tfawd.core.flags.define_run_flags`) and every family's own
    (what main.py parses); returns the families."""
    from tfawd.core.flags import define_run_flags
    found = families()
    define_run_flags(fv, found)
    for family in found:
        family.define_flags(fv)
    return found


def load(model_dir: str, **options):
    """The trained model of any run folder, by the family its results/flags record:
    `tfawd.lm.api.LanguageModel` or `tfawd.speech.inference.Recognizer`."""
    from tfawd.core.run_flags import recorded_flags
    families()
    model = recorded_flags(model_dir).get("model")
    if model is None:
        raise FileNotFoundError(f"{model_dir} holds no trained run (no results.json or "
                                f"flags.json naming its --model)")
    return registry.family_of(model).load(model_dir, **options)
