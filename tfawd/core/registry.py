"""The model families `main.py` dispatches to: each registers one `Family` (its models, data
sets, config class, flags, modes, loader and the errors that are the user's to fix). Adding a
family is a folder with a `family.py` that calls `register`, and its module name in
`tfawd.families.REGISTERED`; `main.py` and `tfawd.core` stay as they are.
"""
import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family.

    modes: {mode: fn(cfg, flag_values, distribution)}, the training ones listed in
    `training_modes` (spread by --distribute; the others run on the chief alone); `errors`:
    exception types that end a command with one line `error: ...` (anything else is a bug and
    keeps its traceback); `mode_errors`: more such types for some modes (e.g. ValueError for
    bad prompts); `load(model_dir, **options)`: the trained model of a run folder, for Python
    users."""
    name: str
    models: tuple
    datasets: tuple
    config: type  # a dataclass extending tfawd.core.flags.RunFlags, with the family defaults
    define_flags: Callable  # (flag_values): the family's own flags and validators
    from_flags: Callable  # (flag_values) -> config
    modes: dict
    training_modes: tuple
    load: Callable
    errors: tuple = ()
    mode_errors: dict = dataclasses.field(default_factory=dict)

    def user_errors(self, mode: str) -> tuple:
        return tuple(self.errors) + tuple(self.mode_errors.get(mode, ()))


_FAMILIES: dict = {}


def register(family: Family) -> Family:
    """Adds `family`; a model name claimed by two families is an error."""
    for other in _FAMILIES.values():
        shared = set(other.models) & set(family.models)
        if other.name != family.name and shared:
            raise ValueError(f"models {sorted(shared)} registered by {other.name} and "
                             f"{family.name}")
    _FAMILIES[family.name] = family
    return family


def registered() -> list:
    """The families registered so far, in registration order (`tfawd.families.families()`
    imports them all first)."""
    return list(_FAMILIES.values())


def family_of(model: str) -> Family:
    """The family of `--model=model`."""
    for family in _FAMILIES.values():
        if model in family.models:
            return family
    raise KeyError(f"--model={model} belongs to no registered family "
                   f"({', '.join(m for f in _FAMILIES.values() for m in f.models)})")

