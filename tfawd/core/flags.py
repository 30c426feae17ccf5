"""The flag machinery shared by the model families: the run-level flags (`RunFlags`, declared
once), and a dataclass field that carries its flag's help text and choices, turned into absl
flags by `define_fields`. What a run folder records of its flags: `tfawd.core.run_flags`.

Library code takes a config dataclass (`tfawd.lm.config.LMConfig`,
`tfawd.speech.config.SpeechConfig`); only `main.py` touches absl.
"""
import dataclasses

from absl import flags


def field(default, help_text, choices=None):
    """A config field that becomes a flag: `choices` makes it an enum."""
    return dataclasses.field(default=default, metadata={"help": help_text, "choices": choices})


@dataclasses.dataclass
class RunFlags:
    """The run-level flags, declared once: every family's config class extends this one (its
    own defaults by `family_default`), and `main.py` defines each of these flags once with the
    defaults of every family in its help (`define_run_flags`)."""
    model: str = field("lstm", "The model; it names the family (`tfawd.families`).")
    dataset: str = field("wikitext2", "The data the model trains and is scored on.")
    data_dir: str = field(None, "Folder holding the data sets (laid out like ../shared/data: "
                                "wikitext-2/, penn/, fsdd/, an4/). Default: $TFAWD_DATA_DIR, "
                                "else a download cache.")
    model_dir: str = field("runs/lstm_base", "Where checkpoints, TensorBoard logs, results.json "
                                             "and plots go. Re-running with the same folder "
                                             "resumes.")
    batch_size: int = field(20, "Training batch size.")
    lr: float = field(20.0, "Learning rate.")
    clip: float = field(0.25, "Clip the global gradient norm to this (0: no clipping).")
    seed: int = field(1111, "Random seed (weights, dropout masks, data order).")
    max_epochs: int = field(40, "Stop after this many epochs.")
    max_steps: int = field(0, "Stop after this many training steps in total (0: no limit).")
    time_budget_min: float = field(0.0, "Stop training after this many minutes of this run, "
                                        "then evaluate (0: no limit). Time the process was "
                                        "stopped (SIGSTOP, a suspended VM) is not counted.")
    log_every: int = field(50, "Steps between progress/TensorBoard updates.")
    checkpoint_every: int = field(500, "Steps between checkpoints (also saved at each epoch "
                                       "end and on every stop).")
    checkpoint_every_min: float = field(0.0, "Also checkpoint when this many minutes passed "
                                             "since the last save (0: off): bounds what a killed "
                                             "run loses on a machine of any speed.")
    profile_steps: str = field("", "START,END: write a profiler trace of these training steps "
                                   "(TensorBoard profile tab).")
    inter_op_threads: int = field(0, "TensorFlow ops run concurrently (0: TensorFlow's "
                                     "default, one per core).")
    intra_op_threads: int = field(0, "Threads inside one op (0: TensorFlow's default, one per "
                                     "core).")
    beam_size: int = field(4, "Beams of beam-search decoding.")
    export_dir: str = field("saved_models", "export: where SavedModels go, in TF Serving's "
                                            "layout <export_dir>/<name>/<version>/, plus "
                                            "models.config.")
    export_name: str = field("", "export: the model's name under --export_dir (default: the "
                                 "basename of --model_dir).")
    # Not a flag: the names of the flags the user gave (command line or flagfile), so a trained
    # run's own architecture is checked against those only; None (a config built in code):
    # every field counts as given.
    explicit: tuple | None = dataclasses.field(default=None, metadata={"flag": False})


RUN_FLAGS = tuple(f.name for f in dataclasses.fields(RunFlags) if f.metadata.get("flag", True))
POSITIVE = ("batch_size", "lr", "max_epochs", "log_every", "checkpoint_every", "beam_size")
NON_NEGATIVE = ("clip", "max_steps", "time_budget_min", "checkpoint_every_min",
                "inter_op_threads", "intra_op_threads")


def family_default(name: str, default):
    """A family's own default of the run-level flag `name` (its help stays RunFlags')."""
    meta = next(f.metadata for f in dataclasses.fields(RunFlags) if f.name == name)
    return dataclasses.field(default=default, metadata=meta)


def profile_range(profile_steps: str):
    """--profile_steps as (start, end), or None."""
    if not profile_steps:
        return None
    start, end = (int(s) for s in profile_steps.split(","))
    return start, end


def _valid_profile_steps(value):
    try:
        start, end = profile_range(value) or (0, 1)
    except ValueError:
        return False
    return 0 <= start < end


def define_run_flags(fv, families) -> None:
    """The run-level flags, once, for `families` (`tfawd.core.registry.Family`): --model and
    --dataset choose among theirs; a flag no family's default agrees on defaults to None
    ("the family's"), and its help lists each family's default."""
    models = tuple(m for fam in families for m in fam.models)
    datasets = tuple(dict.fromkeys(d for fam in families for d in fam.datasets))
    for f in dataclasses.fields(RunFlags):
        if f.name not in RUN_FLAGS:
            continue
        defaults = {fam.name: getattr(fam.config(), f.name) for fam in families}
        choices = models if f.name == "model" else datasets if f.name == "dataset" else None
        help_text = f.metadata["help"]
        default = f.default if f.name == "model" else next(iter(defaults.values()))
        if f.name != "model" and len(set(map(repr, defaults.values()))) > 1:
            default = None
            help_text += " Default: " + "; ".join(f"{name} {value!r}"
                                                   for name, value in defaults.items()) + "."
        define_flag(f, fv, default=default, help_text=help_text, choices=choices)
    for name in POSITIVE:
        flags.register_validator(name, lambda v: v is None or v > 0,
                                 f"--{name} must be positive", flag_values=fv)
    for name in NON_NEGATIVE:
        flags.register_validator(name, lambda v: v is None or v >= 0,
                                 f"--{name} must be >= 0", flag_values=fv)
    flags.register_validator("profile_steps", lambda v: not v or _valid_profile_steps(v),
                             "--profile_steps must be START,END with 0 <= START < END",
                             flag_values=fv)


def define_flag(f, fv, default=dataclasses.MISSING, help_text=None, choices=None) -> None:
    """The absl flag of dataclass field `f`: an enum with choices, else by the field's type."""
    name, meta = f.name, f.metadata
    default = f.default if default is dataclasses.MISSING else default
    help_text, choices = help_text or meta["help"], choices or meta.get("choices")
    if choices:
        flags.DEFINE_enum(name, default, choices, help_text, flag_values=fv)
    elif f.type in (bool, "bool"):
        flags.DEFINE_bool(name, default, help_text, flag_values=fv)
    elif f.type in (int, "int"):
        flags.DEFINE_integer(name, default, help_text, flag_values=fv)
    elif f.type in (float, "float"):
        flags.DEFINE_float(name, default, help_text, flag_values=fv)
    else:
        flags.DEFINE_string(name, default, help_text, flag_values=fv)


def define_fields(fields, fv):
    """One absl flag per dataclass field that is a flag and not a run-level one (those are
    defined once, by `define_run_flags`)."""
    for f in fields:
        if f.metadata.get("flag") is False or f.name in RUN_FLAGS:
            continue
        define_flag(f, fv)


def config_from_flags(cls, fv):
    """An instance of the dataclass `cls` from the flags: each flag's value, the class's own
    default where a run-level flag was left to the family (None); `explicit` lists the flags
    given on the command line or in a flagfile."""
    names = [f.name for f in dataclasses.fields(cls) if f.metadata.get("flag") is not False]
    values = {n: fv[n].value for n in names if fv[n].value is not None or n == "data_dir"}
    kw = {"explicit": tuple(sorted(n for n in names if fv[n].present))} if "explicit" in {
        f.name for f in dataclasses.fields(cls)} else {}
    return cls(**values, **kw)
