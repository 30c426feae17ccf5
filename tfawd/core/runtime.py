"""What this machine is, and the TensorFlow settings chosen for it (imported before TensorFlow).

- **oneDNN** (`TF_ENABLE_ONEDNN_OPTS`): TensorFlow turns its oneDNN kernels on by default only on
  x86 CPUs with AVX-512-class features. On a 2-core AMD EPYC with AVX2 only (2026-12-01) they
  were faster for everything this project runs: float32 matmuls in a `tf.function` (the
  2048^3 product, the softmax shape [1400x200]x[200x33278], the recurrent
  [40x400]x[400x1600]), the CPU AWD-LSTM training step against the PyTorch reference, and
  evaluation at batch 10 (that machine's figures are in ../shared/GUIDE.md, section 3; no
  JSON of it is committed, so they are not repeated here). So the entry points call
  `configure_onednn()` first: on x86 it sets the variable to 1 unless the user set it (any value
  the user sets is kept); elsewhere (ARM, where TensorFlow decides per CPU) nothing is changed.
  The variable is read once, when TensorFlow is imported.
- **Precision** (`resolve_precision`): `--precision=auto` is mixed_bfloat16 where the hardware
  multiplies bfloat16 natively (x86 AMX / AVX512_BF16; an NVIDIA GPU of compute capability >= 8,
  Ampere on), float32 elsewhere: without such units bfloat16 is emulated and slower than float32.
- **Memory allocator** (`configure_malloc`): glibc serves each allocation above 32 MB with a
  fresh `mmap` and gives it back with `munmap` when it is freed, so every training step of the
  paper config page-faults in (and the kernel zeroes) its ~370 MB [N, V] products, their
  gradient and its other large temporaries again. On a 2-core Intel Xeon with AMX that halved
  the speed of whatever wrote them (`benchmarks/malloc_ab.py`, the arms alternated: an
  element-wise pass over [5600, 33278] bf16 2.15x faster with the heap kept, the output layer's
  product 1.56x, the paper config's training step 1.06x and the long run's 1.02x, peak memory
  unchanged: results/before_after/malloc_ab_awd_lstm_wt2_intel_amx.json and
  results/before_after/malloc_ab_awd_lstm_wt2_long_intel_amx.json). So the entry points call
  `configure_malloc()`: on glibc it serves every allocation from the heap and keeps freed
  memory for reuse (`mallopt`: no mmap, trim threshold 1 GiB); memory a process has used
  stays its own until it ends. `TFAWD_MALLOC=system`, a `MALLOC_*_` or `GLIBC_TUNABLES`
  variable, or an `LD_PRELOAD`ed allocator leaves glibc's defaults alone.
- `machine()`: the CPU, its vector/matrix features, the oneDNN state and any ISA caps set in
  the environment, recorded with every figure (results.json, benchmark JSONs), since times are
  only comparable on one kind of CPU.
"""
import os
import platform

ONEDNN_VAR = "TF_ENABLE_ONEDNN_OPTS"
BF16_UNITS = ("amx_bf16", "avx512_bf16")
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
PRECISIONS = ("auto", "float32", "mixed_bfloat16")
# Variables that make libraries use fewer vector features than the CPU has: how a figure for a
# CPU without AVX-512 is approximated on one with it (oneDNN, XLA, MKL, PyTorch's kernels).
ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "XLA_FLAGS", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")

_onednn_choice = None  # how configure_onednn() decided, for the records
_malloc_choice = None  # how configure_malloc() decided, for the records
MALLOC_VAR = "TFAWD_MALLOC"
# glibc's mallopt parameters (malloc.h) and the values configure_malloc() sets.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
MALLOC_SETTINGS = {"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": 1 << 30, "M_TOP_PAD": 64 << 20}


def cpu_flags() -> set:
    """The CPU's feature flags (/proc/cpuinfo; empty where that does not exist)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def set_threads(inter_op: int = 0, intra_op: int = 0) -> None:
    """TensorFlow's thread pools (0: its default, one per core); before the first op runs.
    Local workers sharing a machine want one or a few each (`python -m tfawd.launch`)."""
    import tensorflow as tf
    if inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    if intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)


def configure_onednn(environ=None) -> str:
    """Turns TensorFlow's oneDNN kernels on for x86 CPUs unless the user chose (see the module
    docstring). Call before TensorFlow is imported. Returns who decided: "user" (the variable
    was set), "tfawd" (set to 1 here) or "tensorflow" (left to TensorFlow's default)."""
    global _onednn_choice
    environ = os.environ if environ is None else environ
    if ONEDNN_VAR in environ:
        choice = "user"
    elif is_x86():
        environ[ONEDNN_VAR] = "1"
        choice = "tfawd"
    else:
        choice = "tensorflow"
    if environ is os.environ:
        _onednn_choice = choice
    return choice


def _user_chose_malloc(environ) -> bool:
    return (environ.get(MALLOC_VAR, "") == "system" or "LD_PRELOAD" in environ
            or any(k.startswith("MALLOC_") and k.endswith("_") for k in environ)
            or "malloc" in environ.get("GLIBC_TUNABLES", ""))


def configure_malloc(environ=None, libc=None) -> str:
    """Keeps large freed blocks in glibc's heap for reuse instead of returning them to the
    system (see the module docstring). Returns who decided: "user" (a variable says so),
    "tfawd" (set here) or "unavailable" (not glibc). `libc` defaults to this process's."""
    global _malloc_choice
    environ = os.environ if environ is None else environ
    if _user_chose_malloc(environ):
        choice = "user"
    else:
        if libc is None and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            import ctypes
            libc = ctypes.CDLL(None)
        mallopt = getattr(libc, "mallopt", None)
        params = {"M_MMAP_MAX": M_MMAP_MAX, "M_TRIM_THRESHOLD": M_TRIM_THRESHOLD,
                  "M_TOP_PAD": M_TOP_PAD}
        ok = mallopt is not None and all(
            mallopt(params[name], value) == 1 for name, value in MALLOC_SETTINGS.items())
        choice = "tfawd" if ok else "unavailable"
    if environ is os.environ:
        _malloc_choice = choice
    return choice


def onednn_enabled() -> bool | None:
    """Whether TensorFlow runs its oneDNN kernels in this process (None: cannot tell)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return None


def gpu_compute_capabilities() -> list:
    """(major, minor) of each GPU TensorFlow sees (empty on CPU-only builds)."""
    import tensorflow as tf
    out = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        out.append(tuple(details.get("compute_capability", (0, 0))))
    return out


def resolve_precision(requested: str, flags=None, gpus=None) -> str:
    """The dtype policy for `requested` ("auto", "float32" or "mixed_bfloat16"): "auto" is
    mixed_bfloat16 on GPUs that all have bf16 tensor cores (compute capability >= 8) and on
    CPUs with bf16 units (AMX / AVX512_BF16), else float32. `flags` / `gpus` default to this
    machine's (tests pass their own)."""
    if requested not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return requested
    gpus = gpu_compute_capabilities() if gpus is None else gpus
    if gpus:
        return "mixed_bfloat16" if all(cc >= (8, 0) for cc in gpus) else "float32"
    flags = cpu_flags() if flags is None else flags
    return "mixed_bfloat16" if flags & set(BF16_UNITS) else "float32"


def machine() -> dict:
    """The CPU, its cores, the features that decide speed, and oneDNN's state."""
    flags = cpu_flags()
    return {"cpu": cpu_name(), "arch": platform.machine(), "cores": os.cpu_count(),
            "isa": sorted(flags & set(ISA_FLAGS)),
            "bf16_units": sorted(flags & set(BF16_UNITS)),
            "onednn": {"enabled": onednn_enabled(), "decided_by": _onednn_choice,
                       ONEDNN_VAR: os.environ.get(ONEDNN_VAR)},
            "malloc": {"decided_by": _malloc_choice,
                       **({"settings": MALLOC_SETTINGS} if _malloc_choice == "tfawd" else {})},
            "isa_caps": {k: os.environ[k] for k in ISA_CAPS if k in os.environ}}
