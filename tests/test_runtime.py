"""The machine-dependent choices: oneDNN on x86 unless the user chose, --precision=auto by the
hardware's bf16 units, and the record of both."""
import os
import subprocess
import sys

import pytest

from tfawd.core import runtime
from tfawd.lm.config import LMConfig
from tfawd.lm.models import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_onednn_is_turned_on_for_x86_unless_the_user_chose(monkeypatch):
    monkeypatch.setattr(runtime, "is_x86", lambda: True)
    env = {}
    assert runtime.configure_onednn(env) == "tfawd" and env[runtime.ONEDNN_VAR] == "1"
    for value in ("0", "1"):
        env = {runtime.ONEDNN_VAR: value}
        assert runtime.configure_onednn(env) == "user" and env[runtime.ONEDNN_VAR] == value
    monkeypatch.setattr(runtime, "is_x86", lambda: False)
    env = {}
    assert runtime.configure_onednn(env) == "tensorflow" and runtime.ONEDNN_VAR not in env


@pytest.mark.parametrize("user", [None, "0"])
def test_main_records_oneDNN_as_tensorflow_runs_it(user):
    """A fresh process set up like main.py: the variable is set before TensorFlow is imported,
    so TensorFlow's own report of oneDNN agrees with it; a user's 0 is kept."""
    env = {k: v for k, v in os.environ.items() if k != runtime.ONEDNN_VAR}
    if user is not None:
        env[runtime.ONEDNN_VAR] = user
    code = ("import json, main; from tfawd.core import runtime; import tensorflow; "
            "print(json.dumps(runtime.machine()['onednn']))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, check=True).stdout.strip().splitlines()[-1]
    import json
    onednn = json.loads(out)
    if user == "0":
        assert onednn["decided_by"] == "user" and onednn["enabled"] is False
    elif runtime.is_x86():
        assert onednn["decided_by"] == "tfawd" and onednn["enabled"] is True


@pytest.mark.parametrize("flags, gpus, expected", [
    ({"avx2", "fma"}, [], "float32"),
    ({"avx2", "avx512f"}, [], "float32"),
    ({"avx2", "avx512f", "avx512_bf16"}, [], "mixed_bfloat16"),
    ({"avx2", "amx_bf16", "amx_tile"}, [], "mixed_bfloat16"),
    (set(), [(8, 0)], "mixed_bfloat16"),
    ({"avx512_bf16"}, [(7, 5)], "float32"),  # a GPU without bf16 tensor cores decides
    (set(), [(9, 0), (7, 0)], "float32"),
])
def test_auto_precision_is_bf16_only_where_the_hardware_has_bf16_units(flags, gpus, expected):
    assert runtime.resolve_precision("auto", flags=flags, gpus=gpus) == expected


def test_an_explicit_precision_is_kept_and_a_bad_one_named():
    assert runtime.resolve_precision("float32", flags={"avx512_bf16"}) == "float32"
    assert runtime.resolve_precision("mixed_bfloat16", flags=set()) == "mixed_bfloat16"
    with pytest.raises(ValueError, match="--precision must be one of auto"):
        runtime.resolve_precision("float16")


def test_build_model_resolves_auto_for_this_machine():
    model = build_model(LMConfig(emsize=8, nhid=8, precision="auto"), 20)
    assert model.dtype_policy.name == runtime.resolve_precision("auto")


def test_machine_names_the_cpu_features_that_decide_speed():
    info = runtime.machine()
    assert {"cpu", "cores", "isa", "bf16_units", "onednn"} <= set(info)
    assert set(info["bf16_units"]) <= set(runtime.BF16_UNITS)
    # oneDNN: what TensorFlow reports, and on x86 (where configure_onednn sets the variable
    # when the user did not) on exactly when the variable says so
    assert info["onednn"]["enabled"] is runtime.onednn_enabled()
    if runtime.is_x86() and info["onednn"]["enabled"] is not None:
        assert info["onednn"]["enabled"] == (os.environ[runtime.ONEDNN_VAR] not in ("0", ""))
