"""The serving base every model's export uses (issue 7).

Export for TF Serving (issue 7): SavedModels with string-in signatures, in TF Serving's layout.

`--mode=export` writes `<export_dir>/<name>/<version>/` (integer versions; a new export gets
the next one, TF Serving serves the latest) and `<export_dir>/models.config`, the
ModelServerConfig text proto listing every model folder for `--model_config_file`. `<name>`
is `--export_name`, default the basename of `--model_dir`. Each version is written under a
hidden temporary name and renamed when complete, so a server never sees half an export.

The signatures are the model family's: `tfawd.lm.export` (next_words, score, generate) and
`tfawd.speech.export` (transcribe_wav, transcribe_features).
"""
import os
import re

import tensorflow as tf

from tfawd.core import files

SERVING_ROOT = "/models"  # where docker's tensorflow/serving sees the export folder


def next_version(base_dir: str, name: str) -> int:
    """1 + the highest integer version folder of `<base_dir>/<name>` (1 for a new model)."""
    folder = os.path.join(base_dir, name)
    versions = [int(d) for d in os.listdir(folder) if d.isdigit()] if os.path.isdir(folder) else []
    return max(versions, default=0) + 1


def save_version(archive, base_dir: str, name: str) -> str:
    """Writes a `keras.export.ExportArchive` as the next version of `name`; returns its path."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"model name {name!r}: use letters, digits, '_', '-' or '.'")
    path = os.path.join(base_dir, name, str(next_version(base_dir, name)))
    partial = os.path.join(base_dir, name, f".partial-{os.path.basename(path)}")
    # Serving needs no gradients: the LSTM's hand-written backward (lstm_kernel) reads the
    # forward loop's TensorLists, which a saved gradient function could not capture.
    archive.write_out(partial, verbose=False,
                      options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
    os.rename(partial, path)
    return path


def write_models_config(base_dir: str, serving_root: str = SERVING_ROOT) -> str:
    """`<base_dir>/models.config` listing every model folder of `base_dir` (one with integer
    version folders), with base_path `<serving_root>/<name>` (None: this machine's paths)."""
    names = sorted(d for d in os.listdir(base_dir)
                   if os.path.isdir(os.path.join(base_dir, d))
                   and any(v.isdigit() for v in os.listdir(os.path.join(base_dir, d))))
    root = serving_root or os.path.abspath(base_dir)
    entries = "".join(f"  config {{\n    name: '{n}'\n    base_path: '{root}/{n}'\n"
                      f"    model_platform: 'tensorflow'\n  }}\n" for n in names)
    path = os.path.join(base_dir, "models.config")
    files.write_text(path, f"model_config_list {{\n{entries}}}\n")
    return path


def export_name(model_dir: str, name: str = "") -> str:
    """`--export_name`, else the basename of `--model_dir`."""
    return name or os.path.basename(os.path.normpath(model_dir))
