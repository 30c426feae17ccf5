"""Do this machine's two vCPUs behave as two cores? One-thread workers timed alone and side by
side, each pinned to its own CPU, in alternating phases.

Why: on the 2-core VMs here, batch-1 evaluation with 2 intra-op threads alternates between
~745 and ~390 tokens/s from one round to the next
(results/before_after/eval_speed_awd_lstm_wt2_intra2_intel_amx.json), and the slow mode is
its speed with 1 thread (results/before_after/eval_speed_awd_lstm_wt2_intra1_intel_amx.json). If the
hypervisor sometimes runs both vCPUs on one physical core (SMT siblings share its execution
units and caches, which the guest cannot see: `lscpu` says 1 thread per core and the steal
time stays ~0), two workers side by side run at ~half their solo speed in those phases and at
~full speed in the others.

Each phase runs `--chunk_s`-long measurements: a worker on CPU 0 alone, on CPU 1 alone, then
both together; `--rounds` times. The workloads: `compute` (float32 512 x 512 matmuls,
L2-resident, FMA-bound) and `memory` (copies of a 64 MB array, bandwidth-bound). Reported per
workload: the solo rates, the side-by-side rates, and each side-by-side interval's rate as a
fraction of the solo median of its CPU; `paired_below_0.75` counts the intervals where
a worker ran below 3/4 of its solo speed.

  python benchmarks/core_pairing.py --rounds=6 \\
      --out=results/before_after/core_pairing_intel_amx.json
"""
import os
import subprocess
import sys

import common  # first: sys.path
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 6, "Alternations of (CPU 0 alone, CPU 1 alone, both).")
flags.DEFINE_float("phase_s", 6.0, "Seconds of each phase.")
flags.DEFINE_float("chunk_s", 0.5, "Seconds of one timed interval inside a phase.")
flags.DEFINE_list("workloads", ["compute", "memory"], "compute and/or memory.")
flags.register_validator("workloads", lambda v: bool(v) and set(v) <= {"compute", "memory"},
                         "--workloads takes compute and/or memory, e.g. --workloads=compute")
flags.DEFINE_string("out", None, "The JSON to write.")

WORKER = r"""
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
import numpy as np
kind, seconds, chunk = sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
if kind == "compute":
    a = np.random.rand(512, 512).astype(np.float32); b = np.empty_like(a)
    def unit(): np.matmul(a, a, out=b)
    work = 2 * 512 ** 3  # flops
else:
    a = np.ones(16 * 2 ** 20, np.float32); b = np.empty_like(a)
    def unit(): np.copyto(b, a)
    work = 2 * a.nbytes  # bytes read + written
unit()
end = time.perf_counter() + seconds
while time.perf_counter() < end:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < chunk:
        unit(); n += 1
    t = time.perf_counter() - t0
    print(n * work / t / 1e9, flush=True)
"""


def phase(cpus, kind):
    """Rates (GFLOP/s or GB/s) per CPU of one phase, its workers started together."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    procs = {c: subprocess.Popen([sys.executable, "-c", WORKER, str(c), kind,
                                  str(FLAGS.phase_s), str(FLAGS.chunk_s)],
                                 stdout=subprocess.PIPE, text=True, env=env) for c in cpus}
    out = {}
    for c, p in procs.items():
        text, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"worker on CPU {c} failed (exit {p.returncode})")
        out[c] = [float(line) for line in text.splitlines()]
    return out


def main():
    cpus = sorted(os.sched_getaffinity(0))[:2]
    if len(cpus) < 2:
        raise SystemExit("core_pairing needs 2 CPUs in this process's affinity mask")
    result = {**common.record("core_pairing"), "cpus": cpus, "phase_s": FLAGS.phase_s,
              "chunk_s": FLAGS.chunk_s, "rounds": FLAGS.rounds, "workloads": {}}
    for kind in FLAGS.workloads:
        solo = {c: [] for c in cpus}
        paired = {c: [] for c in cpus}
        timeline = []
        for r in range(FLAGS.rounds):
            for c in cpus:
                rates = phase([c], kind)[c]
                solo[c] += rates
                timeline.append({"round": r, "phase": f"cpu{c} alone",
                                 "median": common.spread(rates)["median"]})
            both = phase(cpus, kind)
            for c in cpus:
                paired[c] += both[c]
            timeline.append({"round": r, "phase": "both",
                             **{f"cpu{c}_median": common.spread(both[c])["median"]
                                for c in cpus}})
        solo_median = {c: common.spread(solo[c])["median"] for c in cpus}
        fractions = [v / solo_median[c] for c in cpus for v in paired[c]]
        result["workloads"][kind] = {
            "unit": "GFLOP/s" if kind == "compute" else "GB/s",
            "solo": {f"cpu{c}": common.spread(solo[c]) for c in cpus},
            "paired": {f"cpu{c}": common.spread(paired[c]) for c in cpus},
            "paired_fraction_of_solo": common.spread(fractions),
            "paired_below_0.75": sum(f < 0.75 for f in fractions),
            "paired_intervals": len(fractions),
            "timeline": timeline,
        }
        print(f"{kind}: solo {solo_median}, paired fraction {common.spread(fractions)}",
              flush=True)
    common.emit(result, FLAGS.out)


if __name__ == "__main__":
    common.run(main)
