"""What a run folder records of its flags, and every comparison of those with the flags of a
later command, in one place:

- `adopt_recorded_flags`: a command on a trained run (evaluate, export, predict) takes the
  run's own flags for every flag it does not give;
- `check_resumable` / `record_shapes`: a run resumes only under the flags its checkpoint was
  made with (flags.json; each family names its list);
- `keep_run_precision`: a resumed run keeps its precision, whatever `auto` means here;
- `check_architecture`: architecture flags given to a trained run must be its own (each
  family reads those from its model.json).
"""
import dataclasses
import os

from tfawd.core import files, reporting
from tfawd.core.run_dir import RunDir
from tfawd.core.run_guard import RunError

# Flags a trained run's record never sets for a later command: where things are (this
# machine's folders), what the command is, and the precision (`auto` is this machine's).
NOT_ADOPTED = ("mode", "model_dir", "data_dir", "export_dir", "export_name", "precision",
               "explicit", "espeak_dir")


def recorded_flags(model_dir: str) -> dict:
    """The flags the run in `model_dir` trained with: its results.json's `flags` (all of
    them), else its flags.json (those recorded when it started), else none."""
    run = RunDir(model_dir)
    for path, key in ((run.results, "flags"), (run.flags, None)):
        if files.exists(path):
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


FIX_FLAGS = "restore it from a copy of the run folder (it records the flags the run must keep)"


def read_flags(model_dir: str) -> dict:
    """The run's flags.json ({} when it has none), or one line naming it when damaged."""
    path = RunDir(model_dir).flags
    if not files.exists(path):
        return {}
    saved = files.read_json(path, fix=FIX_FLAGS)
    if not isinstance(saved, dict):
        raise RunError(f"{path} is damaged (not a JSON object); {FIX_FLAGS}")
    return saved


def flag_mismatches(cfg, model_dir: str, keys) -> list:
    """'--k=saved (now v)' for each of `keys` that differs from the run's flags.json."""
    saved = read_flags(model_dir)
    return [f"--{k}={saved[k]} (now {getattr(cfg, k)})" for k in keys
            if k in saved and saved[k] != getattr(cfg, k)]


def check_resumable(cfg, model_dir: str, keys) -> None:
    """Refuses to reuse a model_dir trained with other values of `keys` (the flags a checkpoint
    cannot be resumed under: shapes, data, model; see `record_shapes`)."""
    diff = flag_mismatches(cfg, model_dir, keys)
    if diff:
        raise RunError(f"{model_dir} holds a run made with {', '.join(diff)} (its "
                       f"{os.path.basename(RunDir(model_dir).flags)}); use those flags to "
                       f"resume it, or a new --model_dir")


def record_shapes(cfg, model_dir: str, keys) -> None:
    """flags.json: the flags `keys` as given, and the precision the run trains in (added to a
    run recorded before precisions were kept)."""
    path = RunDir(model_dir).flags
    saved = read_flags(model_dir)
    if "precision" in saved:
        return
    reporting.write_json(path, {**{k: getattr(cfg, k) for k in keys}, **saved,
                                "precision": cfg.precision})


def keep_run_precision(cfg, model_dir: str):
    """A resumed run trains in the precision it started with (flags.json), whatever
    `--precision=auto` resolves to on this machine, with a one-line notice when they differ;
    an explicit other `--precision` changes it, also with a notice (and flags.json then records
    the new one). Never a silent change of numerics mid-run (issue 24)."""
    path = RunDir(model_dir).flags
    saved = read_flags(model_dir).get("precision")
    if saved is None or saved == cfg.precision:
        return cfg
    if cfg.precision_given in (None, "auto"):
        print(f"notice: {model_dir} trains in {saved} (recorded in {path}); keeping it although "
              f"--precision=auto means {cfg.precision} on this machine (pass --precision="
              f"{cfg.precision} to change)", flush=True)
        return dataclasses.replace(cfg, precision=saved)
    print(f"notice: {model_dir} trained in {saved} so far; continuing in {cfg.precision} as "
          f"--precision asks", flush=True)
    reporting.write_json(path, {**read_flags(model_dir), "precision": cfg.precision})
    return cfg


def check_architecture(cfg, model_dir: str, saved: dict, wildcards=()) -> None:
    """Refuses architecture flags the user gave (`cfg.explicit`; every field of a config
    built in code) that differ from the run's `saved` {flag: value} (a given value among
    `wildcards`, e.g. `auto`, agrees with any), naming both values."""
    given = saved if cfg.explicit is None else cfg.explicit
    conflicts = [f"--{k}={v} (now {getattr(cfg, k)})" for k, v in saved.items()
                 if k in given and getattr(cfg, k) != v and getattr(cfg, k) not in wildcards]
    if conflicts:
        raise RunError(f"--model_dir={model_dir} was trained with {', '.join(conflicts)}; "
                       f"drop those flags (the run's own are read from its model.json)")
