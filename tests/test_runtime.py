"""The machine-dependent choices: oneDNN on x86 unless the user chose, --precision=auto by the
hardware's bf16 units, and the record of both."""
import io
import json
import os
import pathlib
import platform
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
        assert onednn == {"enabled": False, "decided_by": "user", runtime.ONEDNN_VAR: "0"}
    elif runtime.is_x86():
        assert onednn == {"enabled": True, "decided_by": "tfawd", runtime.ONEDNN_VAR: "1"}
    else:  # ARM and the rest: left to TensorFlow, which decides per CPU
        assert onednn["decided_by"] == "tensorflow" and onednn[runtime.ONEDNN_VAR] is None


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


def _flags_in_proc_cpuinfo(text=None) -> set:
    """The CPU's feature flags read here, without runtime.py: x86's "flags" line, ARM's
    "Features" (none where /proc/cpuinfo does not exist)."""
    if text is None:
        try:
            text = pathlib.Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def test_build_model_resolves_auto_for_this_machine():
    """The module doc's rule applied to what /proc/cpuinfo and TensorFlow say about this
    machine: bf16 units (AMX, AVX512_BF16) -> mixed_bfloat16, none -> float32; GPUs decide
    when there are some (all of compute capability >= 8 -> mixed_bfloat16)."""
    import tensorflow as tf
    gpus = [tuple(tf.config.experimental.get_device_details(g).get("compute_capability", (0, 0)))
            for g in tf.config.list_physical_devices("GPU")]
    if gpus:
        expected = "mixed_bfloat16" if min(gpus) >= (8, 0) else "float32"
    else:
        expected = ("mixed_bfloat16" if _flags_in_proc_cpuinfo() & {"amx_bf16", "avx512_bf16"}
                    else "float32")
    model = build_model(LMConfig(emsize=8, nhid=8, precision="auto"), 20)
    assert model.dtype_policy.name == expected
    assert model.rnns[0].compute_dtype == ("bfloat16" if expected != "float32" else "float32")


@pytest.mark.parametrize("flags, expected", [({"avx2", "fma", "avx512f"}, "float32"),
                                             ({"avx2", "amx_bf16", "amx_tile"}, "mixed_bfloat16")])
def test_build_model_takes_auto_from_the_cpu_flags(monkeypatch, flags, expected):
    """build_model resolves `auto` from the flags the machine reports (not a fixed policy)."""
    monkeypatch.setattr(runtime, "gpu_compute_capabilities", lambda: [])
    monkeypatch.setattr(runtime, "cpu_flags", lambda: set(flags))
    model = build_model(LMConfig(emsize=8, nhid=8, precision="auto"), 20)
    assert model.dtype_policy.name == expected
    assert build_model(LMConfig(emsize=8, nhid=8, precision="float32"), 20).dtype_policy.name \
        == "float32"  # an explicit choice is kept whatever the flags


X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd aes pmull sha1 sha2 crc32 atomics asimddp sve svebf16 i8mm bf16
CPU implementer\t: 0x41
"""


@pytest.mark.parametrize("arch, cpuinfo, decided, variable, isa, bf16_units, precision", [
    ("x86_64", X86_CPUINFO, "tfawd", "1",
     ["amx_bf16", "amx_tile", "avx2", "avx512_bf16", "avx512f", "fma"],
     ["amx_bf16", "avx512_bf16"], "mixed_bfloat16"),
    # ARM: TensorFlow keeps its own oneDNN choice; its bf16 is not one of the x86 units the
    # rule names ("float32 elsewhere"), and none of the x86 features is claimed
    ("aarch64", ARM_CPUINFO, "tensorflow", None, [], [], "float32"),
])
def test_each_platform_is_configured_and_recorded_by_the_rule(monkeypatch, arch, cpuinfo,
                                                              decided, variable, isa,
                                                              bf16_units, precision):
    """What configure_onednn, machine() and resolve_precision do on another platform, by
    giving runtime.py that platform's `platform.machine()` and /proc/cpuinfo."""
    real_open = open

    def fake_open(path, *args, **kwargs):
        if path == "/proc/cpuinfo":
            return io.StringIO(cpuinfo)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(runtime.platform, "machine", lambda: arch)
    monkeypatch.setattr(runtime, "open", fake_open, raising=False)
    monkeypatch.setattr(runtime, "_onednn_choice", None)  # restored after the test
    monkeypatch.delenv(runtime.ONEDNN_VAR, raising=False)
    assert runtime.is_x86() == (arch == "x86_64")
    assert runtime.cpu_flags() == _flags_in_proc_cpuinfo(cpuinfo) != set()
    assert runtime.configure_onednn() == decided
    assert os.environ.get(runtime.ONEDNN_VAR) == variable
    info = runtime.machine()
    assert info["arch"] == arch and info["isa"] == isa and info["bf16_units"] == bf16_units
    assert info["onednn"] == {"enabled": runtime.onednn_enabled(), "decided_by": decided,
                              runtime.ONEDNN_VAR: variable}
    assert runtime.resolve_precision("auto", gpus=[]) == precision
    if arch == "x86_64":
        assert info["cpu"] == "Intel(R) Xeon(R) Platinum 8480+"


def test_machine_names_the_cpu_features_that_decide_speed():
    info = runtime.machine()
    assert {"cpu", "cores", "isa", "bf16_units", "onednn"} <= set(info)
    assert set(info["bf16_units"]) <= set(runtime.BF16_UNITS)
    # what /proc/cpuinfo says, read here
    flags = _flags_in_proc_cpuinfo()
    assert info["isa"] == sorted(flags & {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16",
                                          "amx_tile"})
    assert info["bf16_units"] == sorted(flags & {"amx_bf16", "avx512_bf16"})
    assert info["cores"] == os.cpu_count() and info["arch"] == platform.machine()
    # oneDNN: what TensorFlow reports, and on x86 (where configure_onednn sets the variable
    # when the user did not) on exactly when the variable says so
    assert info["onednn"]["enabled"] is runtime.onednn_enabled()
    if runtime.is_x86() and info["onednn"]["enabled"] is not None:
        assert info["onednn"]["enabled"] == (os.environ[runtime.ONEDNN_VAR] not in ("0", ""))


class _FakeLibc:
    def __init__(self, accepts=True):
        self.calls, self.accepts = [], accepts

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1 if self.accepts else 0


def test_malloc_is_tuned_unless_the_user_chose_an_allocator():
    libc = _FakeLibc()
    assert runtime.configure_malloc({}, libc) == "tfawd"
    assert libc.calls == [(runtime.M_MMAP_MAX, 0), (runtime.M_TRIM_THRESHOLD, 1 << 30),
                          (runtime.M_TOP_PAD, 64 << 20)]
    for env in ({runtime.MALLOC_VAR: "system"}, {"MALLOC_ARENA_MAX_": "2"},
                {"LD_PRELOAD": "libjemalloc.so.2"}, {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}):
        libc = _FakeLibc()
        assert runtime.configure_malloc(env, libc) == "user" and libc.calls == [], env
    assert runtime.configure_malloc({}, _FakeLibc(accepts=False)) == "unavailable"
    assert runtime.configure_malloc({}, object()) == "unavailable"  # no mallopt (not glibc)


_REFAULTS = """
import ctypes, json, resource, main
from tfawd.core import runtime
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
size = 256 << 20
def touch():
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    return p
libc.free(ctypes.c_void_p(touch()))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"faults": faults, "malloc": runtime.machine()["malloc"]}))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
@pytest.mark.parametrize("setting", [None, "system"])
def test_a_freed_large_block_is_reused_without_page_faults(setting):
    """A process set up like main.py gets a 256 MB block freed a moment ago back without the
    page faults of fresh memory (which glibc's defaults would map again: 65,536 of 4 KiB, or
    128 of 2 MiB with transparent huge pages); TFAWD_MALLOC=system keeps glibc's defaults."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("LD_PRELOAD", "GLIBC_TUNABLES",
                                                         runtime.MALLOC_VAR)}
    if setting:
        env[runtime.MALLOC_VAR] = setting
    out = subprocess.run([sys.executable, "-c", _REFAULTS], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    if setting is None:
        assert res["malloc"]["decided_by"] == "tfawd"
        assert res["faults"] < 16, res
    else:
        assert res["malloc"] == {"decided_by": "user"}
        assert res["faults"] >= 100, res
