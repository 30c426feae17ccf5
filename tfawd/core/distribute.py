"""Training on several devices or machines with `tf.distribute`, equal to one process.

`--distribute=none|mirrored|multi_worker` picks the strategy: none is TensorFlow's default
(one device), `mirrored` is `MirroredStrategy` (every GPU of this machine, or
`--cpu_replicas` logical CPUs), `multi_worker` is `MultiWorkerMirroredStrategy` (one process
per machine or per local worker, configured by `TF_CONFIG`, all-reduce over gRPC). The
trainers go through `strategy.run` directly (Keras' `model.fit` with multi-worker strategies
has open bugs: keras-team/keras#20585, #21069, #21172).

How a step stays equal to the single-process step with the same global batch:
- every replica receives the global batch and keeps its own rows (`this_replica_rows`):
  replica r of R owns rows [r*B/R, (r+1)*B/R) (the language model's stream columns);
- each replica's loss is its share of the global mean, so the SUM all-reduce of the
  gradients (`all_reduce_sum`, one packed collective) is the global batch's gradient;
  clipping then sees the global norm; the optimizers do not reduce again
  (`tfawd.nn.optimizers.StepReducedGradients`);
- random draws over the batch (locked dropout masks, teacher forcing) are made for the
  global batch from the same seed state on every replica and sliced (`replica_rows_of`), so
  a distributed run draws exactly what one process draws;
- decisions taken from clocks, signals or floating-point scores (time budget, SIGTERM,
  NT-ASGD's trigger, keeping the best weights) are agreed between the workers (`agree`), so
  no worker leaves a collective the others still wait in.

Only the chief writes `--model_dir`; every other worker trains in a scratch copy of the
run's resume files (`run_folder`), deleted when it ends. A collective that waits longer than
`--collective_timeout_s` for a lost worker fails the run with `WorkerLost` (collectives wait
forever unless told otherwise); re-running every worker resumes from the last checkpoint.
"""
import contextlib
import dataclasses
import json
import os
import shutil
import tempfile

import tensorflow as tf
from absl import logging

from tfawd.core import files
from tfawd.core.flags import define_fields, field
from tfawd.core.run_dir import RunDir
from tfawd.core.run_guard import RunError

KINDS = ("none", "mirrored", "multi_worker")


@dataclasses.dataclass
class DistributeConfig:
    """How a training run is spread over devices and machines (not part of the model)."""
    distribute: str = field("none", "none: one process, one device. mirrored: every GPU of "
                                    "this machine (or --cpu_replicas logical CPUs). "
                                    "multi_worker: one process per worker, TF_CONFIG names the "
                                    "cluster (BUILD.md); --batch_size stays the global batch.",
                            choices=KINDS)
    collective_timeout_s: float = field(600.0, "multi_worker: a collective that waits longer "
                                               "than this for another worker ends the run "
                                               "(a lost worker) instead of waiting forever.")
    cpu_replicas: int = field(0, "mirrored: split the CPU into this many logical devices, one "
                                 "replica each (multi-replica runs without GPUs; 0: the GPUs, "
                                 "else the CPU).")


def define_flags(fv) -> None:
    from absl import flags
    define_fields(dataclasses.fields(DistributeConfig), fv)
    flags.register_validator("collective_timeout_s", lambda v: v > 0,
                             "--collective_timeout_s must be positive", flag_values=fv)
    flags.register_validator("cpu_replicas", lambda v: v >= 0, "--cpu_replicas must be >= 0",
                             flag_values=fv)


def from_flags(fv) -> DistributeConfig:
    return DistributeConfig(**{f.name: fv[f.name].value
                               for f in dataclasses.fields(DistributeConfig)})


class WorkerLost(RunError):
    """A collective failed or timed out: another worker stopped."""


# Errors a collective raises when a peer is gone (aborted by the health check or timed out).
COLLECTIVE_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                     tf.errors.CancelledError, tf.errors.AbortedError)


@dataclasses.dataclass
class Distribution:
    """A strategy and this process's place in the cluster."""
    strategy: tf.distribute.Strategy
    kind: str = "none"
    worker: int = 0
    num_workers: int = 1

    @property
    def is_chief(self) -> bool:
        return self.worker == 0

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    def scope(self):
        return self.strategy.scope()

    def describe(self) -> dict:
        """For results.json."""
        return {"kind": self.kind, "workers": self.num_workers, "replicas": self.replicas}

    def check_batch(self, batch_size: int, flag: str = "--batch_size") -> None:
        """The global batch must split evenly over the replicas."""
        if batch_size % self.replicas:
            raise RunError(f"{flag}={batch_size} does not split over {self.replicas} replicas "
                           f"(--distribute={self.kind}); use a multiple of {self.replicas}")

    def agree(self, value: float, op: str = "max") -> float:
        """`value` reduced over the workers ("max" / "min"): the one decision every worker takes
        (a clock, a signal, a score). One process (any number of local replicas): `value`."""
        if self.num_workers == 1:
            return value
        reduce = {"max": max, "min": min}[op]  # (ReduceOp has SUM and MEAN only)
        per_replica = self.strategy.run(lambda: tf.constant([float(value)], tf.float64))
        return reduce(self.strategy.gather(per_replica, axis=0).numpy().tolist())

    def agreed_precision(self, precision: str, given: str | None) -> str:
        """The chief's precision on every worker when `--precision=auto` (`given`; None: a
        config built in code) was resolved by each machine for itself: a cluster of mixed CPU
        classes trains in one precision, the chief's, never in two. An explicit precision is
        the same flag everywhere and is kept."""
        if self.num_workers == 1 or given not in (None, "auto"):
            return precision
        codes = ("float32", "mixed_bfloat16")
        chief = codes[int(self.agree(codes.index(precision) if self.is_chief else -1, "max"))]
        if chief != precision:
            print(f"notice: worker {self.worker} trains in {chief}, the chief's --precision=auto "
                  f"(this machine's would be {precision})", flush=True)
        return chief

    @contextlib.contextmanager
    def run_folder(self, model_dir: str):
        """The folder this process writes: `model_dir` for the chief; for other workers a
        scratch folder holding a copy of the run's resume files (so they restore the
        chief's checkpoint), deleted on exit."""
        if self.is_chief:
            yield model_dir
            return
        scratch = tempfile.mkdtemp(prefix=f"tfawd-worker{self.worker}-")
        try:
            copy_resume_files(model_dir, scratch)
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def copy_resume_files(model_dir: str, dest: str) -> None:
    """What a run needs to continue: ckpt/, history.json and the files that describe it."""
    src, dst = RunDir(model_dir), RunDir(dest)  # the chief's folder may be remote (gs://)
    if files.isdir(src.ckpt):
        files.copytree(src.ckpt, dst.ckpt)
    for name in ("history", "flags", "vocab", "model"):
        if files.exists(getattr(src, name)):
            files.copy(getattr(src, name), getattr(dst, name))


def local() -> Distribution:
    """One process, TensorFlow's default strategy (what `--distribute=none` means)."""
    return Distribution(tf.distribute.get_strategy())


def make(cfg: DistributeConfig) -> Distribution:
    """The strategy of `--distribute`; create it before any other TensorFlow work
    (`MultiWorkerMirroredStrategy` starts this process's gRPC server)."""
    if cfg.distribute == "none":
        return local()
    if cfg.distribute == "mirrored":
        devices = None
        if cfg.cpu_replicas:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * cfg.cpu_replicas)
            devices = [f"/cpu:{i}" for i in range(cfg.cpu_replicas)]
        strategy = tf.distribute.MirroredStrategy(devices)
        logging.info("MirroredStrategy over %s", strategy.extended.worker_devices)
        return Distribution(strategy, "mirrored")
    worker, num_workers = cluster_position(os.environ.get("TF_CONFIG", ""))
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=cfg.collective_timeout_s,
        implementation=tf.distribute.experimental.CommunicationImplementation.RING)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    logging.info("MultiWorkerMirroredStrategy: worker %d of %d, %d replicas in all", worker,
                 num_workers, strategy.num_replicas_in_sync)
    return Distribution(strategy, "multi_worker", worker, num_workers)


def cluster_position(tf_config: str) -> tuple[int, int]:
    """(this worker's index, number of workers) from TF_CONFIG, or a RunError saying what
    is wrong with it. Worker 0 is the chief (a separate "chief" task is not supported)."""
    fix = ("set TF_CONFIG='{\"cluster\": {\"worker\": [\"host0:port\", \"host1:port\"]}, "
           "\"task\": {\"type\": \"worker\", \"index\": I}}' on each worker (BUILD.md), or "
           "use python -m tfawd.launch for local workers")
    if not tf_config:
        raise RunError(f"--distribute=multi_worker needs TF_CONFIG; {fix}")
    try:
        spec = json.loads(tf_config)
        workers = spec["cluster"]["worker"]
        task = spec["task"]
        index = int(task["index"])
    except (ValueError, KeyError, TypeError) as e:
        raise RunError(f"TF_CONFIG is not valid ({e!r}); {fix}") from None
    if set(spec["cluster"]) - {"worker"} or task.get("type") != "worker":
        raise RunError(f"TF_CONFIG: only \"worker\" tasks are supported (worker 0 is the "
                       f"chief), got cluster {sorted(spec['cluster'])} and task type "
                       f"{task.get('type')!r}; {fix}")
    if not 0 <= index < len(workers):
        raise RunError(f"TF_CONFIG: task index {index} is not one of the {len(workers)} "
                       f"workers; {fix}")
    return index, len(workers)


# -- inside a replica (`strategy.run`); one replica without a strategy -------------------

def _replicas_context():
    """The calling replica's context when there are several replicas, else None."""
    ctx = tf.distribute.get_replica_context()
    return ctx if ctx is not None and ctx.num_replicas_in_sync > 1 else None


def replica_position() -> tuple:
    """(replica id, number of replicas) of the calling replica; (0, 1) outside any."""
    ctx = _replicas_context()
    return (0, 1) if ctx is None else (ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync)


def this_replica_rows(value):
    """This replica's rows of a global-batch tensor [B, ...]: rows [r*B/R, (r+1)*B/R) of
    replica r (rounded down at both ends, so a batch that does not divide, such as an epoch's
    last, is still split whole)."""
    index, count = replica_position()
    if count == 1:
        return value
    rows = tf.shape(value)[0]
    return value[index * rows // count:(index + 1) * rows // count]


def replica_rows_of(draw, local_rows):
    """`draw(n)` makes a tensor for a batch of n rows; returns this replica's rows of the
    global batch's draw, so every replica draws what one process would have (same seed
    state on each) and keeps its share."""
    _, count = replica_position()
    if count == 1:
        return draw(local_rows)
    return this_replica_rows(draw(local_rows * count))


def all_reduce_sum(values: list) -> list:
    """SUM over the replicas of a list of tensors, one packed collective."""
    ctx = _replicas_context()
    if ctx is None:
        return values
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, values)


def gather_rows(value):
    """The global batch's rows [B, ...] from every replica's [B / R, ...]."""
    ctx = _replicas_context()
    if ctx is None:
        return value
    return ctx.all_gather(value, axis=0)


def first_local(strategy, value):
    """One local copy of a value every replica holds alike (e.g. after an all-reduce)."""
    return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], value)
