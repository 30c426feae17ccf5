"""The serving base every model's export uses (issue 7).

Export for TF Serving (issue 7): SavedModels with string-in signatures, in TF Serving's layout.

`--mode=export` writes `<export_dir>/<name>/<version>/` (integer versions; a new export gets
the next one, TF Serving serves the latest) and `<export_dir>/models.config`, the
ModelServerConfig text proto listing every model folder for `--model_config_file`. `<name>`
is `--export_name`, default the basename of `--model_dir`. Each version is written under a
hidden temporary name and renamed when complete, so a server never sees half an export.

A damaged export folder (issue 27) gives one line naming the path and the fix: `--export_dir`
or `<export_dir>/<name>` that is a file, a folder that cannot be written, a `models.config` that
is a folder. What a killed export leaves (a hidden `.partial-*` version) is removed with a
warning; a version folder without `saved_model.pb` (not ours: ours are renamed whole) is named in
a warning, since TF Serving would try to serve it until a newer version exists.

The signatures are the model family's: `tfawd.lm.export` (next_words, score, generate) and
`tfawd.speech.export` (transcribe_wav, transcribe_features); each family also gives warm-up
requests for them, written to `assets.extra/tf_serving_warmup_requests` (`tfawd.core.warmup`),
which TF Serving replays before it serves a new version.
"""
import os
import re

import tensorflow as tf
from absl import logging

from tfawd.core import files
from tfawd.core.warmup import write_warmup

SERVING_ROOT = "/models"  # where docker's tensorflow/serving sees the export folder
# TF Serving's --batching_parameters_file, measured by benchmarks/serving_load.py
BATCHING_PARAMETERS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "serving", "batching_parameters.txt")


def next_version(base_dir: str, name: str) -> int:
    """1 + the highest integer version folder of `<base_dir>/<name>` (1 for a new model)."""
    folder = os.path.join(base_dir, name)
    versions = [int(d) for d in files.listdir(folder) if d.isdigit()] if files.isdir(folder) else []
    return max(versions, default=0) + 1


def check_export_dir(base_dir: str, name: str) -> str:
    """Makes `<base_dir>/<name>` ready for a new version and returns it: a ValueError of one
    line when a path on the way is not a writable folder; leftovers of a killed export removed
    and version folders without a SavedModel named (warnings)."""
    folder = os.path.join(base_dir, name)
    for path, what in ((base_dir, "--export_dir"), (folder, f"--export_dir's {name}/")):
        if files.exists(path) and not files.isdir(path):
            raise ValueError(f"{what} {path} is a file, not a folder; move it aside or choose "
                             f"another --export_dir / --export_name")
    config = os.path.join(base_dir, "models.config")
    if files.isdir(config):
        raise ValueError(f"{config} is a folder; move it aside (export writes the server's "
                         f"config file there)")
    try:
        files.makedirs(folder)
    except (OSError, tf.errors.OpError) as e:
        reason = getattr(e, "strerror", None) or getattr(e, "message", "") or type(e).__name__
        raise ValueError(f"cannot create {folder} ({reason}); choose a writable "
                         f"--export_dir") from None
    if not files.is_remote(folder) and not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write in {folder}; choose a writable --export_dir")
    for entry in sorted(files.listdir(folder)):
        path = os.path.join(folder, entry)
        if entry.startswith(".partial-"):
            logging.warning("removing %s, left by an export that did not finish", path)
            files.rmtree(path)
        elif entry.isdigit() and not files.exists(os.path.join(path, "saved_model.pb")):
            logging.warning("%s has no saved_model.pb: not a whole SavedModel (TF Serving will "
                            "fail on it until a newer version exists; this export adds one)", path)
    return folder


def save_version(archive, base_dir: str, name: str, warmup_requests=()) -> str:
    """Writes a `keras.export.ExportArchive` as the next version of `name`, with
    `warmup_requests` [(signature, {input: array})] as its TF Serving warm-up file
    (`tfawd.core.warmup`); returns its path."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"model name {name!r}: use letters, digits, '_', '-' or '.'")
    check_export_dir(base_dir, name)
    path = os.path.join(base_dir, name, str(next_version(base_dir, name)))
    partial = os.path.join(base_dir, name, f".partial-{os.path.basename(path)}")
    # Serving needs no gradients: the LSTM's hand-written backward (lstm_kernel) reads the
    # forward loop's TensorLists, which a saved gradient function could not capture.
    try:
        archive.write_out(partial, verbose=False,
                          options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
    except (OSError, tf.errors.OpError) as e:  # a full disk, a folder gone: nothing half-made
        files.rmtree(partial)
        reason = getattr(e, "strerror", None) or getattr(e, "message", "") or str(e)
        raise ValueError(f"could not write the SavedModel {path} "
                         f"({reason.splitlines()[0] if reason else type(e).__name__}); "
                         f"free space or choose another --export_dir") from None
    if warmup_requests:
        write_warmup(partial, name, warmup_requests)
    files.rename(partial, path)
    return path


def write_models_config(base_dir: str, serving_root: str = SERVING_ROOT) -> str:
    """`<base_dir>/models.config` listing every model folder of `base_dir` (one with integer
    version folders), with base_path `<serving_root>/<name>` (None: this machine's paths); and
    beside it `batching_parameters.txt`, a copy of `configs/serving/batching_parameters.txt`
    (when the checkout has it), for TF Serving's `--enable_batching`."""
    names = sorted(d for d in files.listdir(base_dir) if _readable_folder(os.path.join(base_dir, d))
                   and any(v.isdigit() for v in files.listdir(os.path.join(base_dir, d))))
    root = serving_root or files.absolute(base_dir)
    entries = "".join(f"  config {{\n    name: '{n}'\n    base_path: '{root}/{n}'\n"
                      f"    model_platform: 'tensorflow'\n  }}\n" for n in names)
    path = os.path.join(base_dir, "models.config")
    files.write_text(path, f"model_config_list {{\n{entries}}}\n")
    if os.path.exists(BATCHING_PARAMETERS):  # beside it, for --enable_batching
        with open(BATCHING_PARAMETERS) as f:
            files.write_text(os.path.join(base_dir, "batching_parameters.txt"), f.read())
    return path


def _readable_folder(path: str) -> bool:
    if files.is_remote(path):
        return files.isdir(path)
    return os.path.isdir(path) and os.access(path, os.R_OK | os.X_OK)


def export_name(model_dir: str, name: str = "") -> str:
    """`--export_name`, else the basename of `--model_dir`."""
    return name or os.path.basename(os.path.normpath(model_dir))
