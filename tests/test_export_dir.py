"""A damaged export folder (issue 27): what a killed export leaves is removed, a version folder
that is not a whole SavedModel is named, a full disk while writing leaves no half version, and
`models.config` is rewritten whole; paths that are not folders are refused in one line
(tests/test_damaged_run_cli.py checks those at the command line)."""
import errno
import os

import keras
import pytest
import tensorflow as tf
from absl import logging

from tfawd.core import serving


def tiny_archive():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", model.call, input_signature=[tf.TensorSpec((None, 2))])
    return archive


def test_a_killed_exports_leftovers_are_removed_and_a_broken_version_named(tmp_path, caplog):
    first = serving.save_version(tiny_archive(), str(tmp_path), "m")
    (tmp_path / "m" / ".partial-3").mkdir()  # a killed export of version 3
    (tmp_path / "m" / ".partial-3" / "saved_model.pb").write_bytes(b"half")
    os.remove(os.path.join(first, "saved_model.pb"))  # version 1 damaged after the fact
    (tmp_path / "m" / "2").mkdir()  # an empty version folder
    with caplog.at_level(logging.WARNING):
        path = serving.save_version(tiny_archive(), str(tmp_path), "m")
    assert path == str(tmp_path / "m" / "3")
    assert sorted(os.listdir(tmp_path / "m")) == ["1", "2", "3"]
    named = " ".join(r.getMessage() for r in caplog.records)
    assert ".partial-3" in named and first in named and str(tmp_path / "m" / "2") in named
    assert tf.saved_model.load(path).signatures["serving_default"] is not None


def test_a_full_disk_while_writing_leaves_no_half_version(tmp_path, monkeypatch):
    serving.save_version(tiny_archive(), str(tmp_path), "m")
    archive = tiny_archive()

    def full(path, **kw):
        os.makedirs(os.path.join(path, "variables"))
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(archive, "write_out", full)
    with pytest.raises(ValueError) as e:
        serving.save_version(archive, str(tmp_path), "m")
    assert "\n" not in str(e.value) and str(tmp_path / "m" / "2") in str(e.value)
    assert "No space left" in str(e.value)
    assert os.listdir(tmp_path / "m") == ["1"]


def test_a_damaged_models_config_is_rewritten_whole(tmp_path):
    serving.save_version(tiny_archive(), str(tmp_path), "m")
    (tmp_path / "models.config").write_bytes(b"\xff\x00garbage")
    (tmp_path / "notes").write_text("a file beside the models is not a model")
    path = serving.write_models_config(str(tmp_path))
    text = open(path).read()
    assert text.startswith("model_config_list {") and text.count("config {") == 1
    assert "name: 'm'" in text


NOT_FOLDERS = ("export_dir", "model folder", "models.config")


def not_a_folder(base, what, name):
    """Damages the export folder `base` for model `name` as `what` (one of NOT_FOLDERS): the
    export folder or the model's folder is a file, or models.config is a folder; returns the
    path the refusal must name."""
    if what == "export_dir":
        base.write_text("not a folder")
        return base
    if what == "model folder":
        base.mkdir()
        (base / name).write_text("not a folder")
        return base / name
    (base / "models.config").mkdir(parents=True)
    return base / "models.config"


@pytest.mark.parametrize("what", NOT_FOLDERS)
def test_a_path_that_is_not_a_folder_is_refused_in_one_line(tmp_path, what):
    base = tmp_path / "export"
    named = not_a_folder(base, what, "m")
    with pytest.raises(ValueError) as e:
        serving.save_version(tiny_archive(), str(base), "m")
    assert "\n" not in str(e.value) and str(named) in str(e.value)


def test_the_measured_batching_parameters_go_beside_models_config(tmp_path):
    """configs/serving/batching_parameters.txt (written by benchmarks/serving_load.py) is a
    BatchingParameters text proto with the four fields TF Serving reads, copied by the export
    beside models.config for --enable_batching."""
    import re
    text = open(serving.BATCHING_PARAMETERS).read()
    fields = dict(re.findall(r"^(\w+) \{ value: (\d+) \}$", text, re.M))
    assert sorted(fields) == ["batch_timeout_micros", "max_batch_size", "max_enqueued_batches",
                              "num_batch_threads"]
    assert all(int(v) > 0 for v in fields.values())
    assert text.startswith("# TF Serving --batching_parameters_file, from "
                           "benchmarks/serving_load.py on ")
    serving.save_version(tiny_archive(), str(tmp_path), "m")
    serving.write_models_config(str(tmp_path))
    assert (tmp_path / "batching_parameters.txt").read_text() == text
