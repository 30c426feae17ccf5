"""A run made of segments: one record per start or resume of a run folder (issue 24).

A long run trains across many processes, and the machine under it may change between them
(another CPU class, another precision by `--precision=auto`). `<model_dir>/segments.json` lists
each process that trained the run: its machine (CPU, ISA, bf16 units), precision, first and last
step, training seconds and units (tokens, frames) and their rate. The loop updates the current
segment whenever it checkpoints, so the file agrees with what a resume would continue from;
results.json carries the list.
"""
import datetime

from tfawd.core import files, reporting, runtime
from tfawd.core.run_guard import RunError


def machine_summary() -> dict:
    """The machine fields a segment keeps (the rest of `runtime.machine()` is in results.json)."""
    m = runtime.machine()
    return {"cpu": m["cpu"], "cores": m["cores"], "isa": m["isa"], "bf16_units": m["bf16_units"],
            "onednn": m["onednn"]["enabled"]}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Segments:
    """`<model_dir>/segments.json`: `start()` opens this process's segment, `update()` moves its
    end to the loop's counters (called with every checkpoint)."""

    def __init__(self, path: str):
        self.path = path
        self.items = []
        if files.exists(path):
            self.items = files.read_json(path, "the record of the run's segments",
                                         "remove it to start a new record (the run's "
                                         "checkpoints do not need it)")
            if not isinstance(self.items, list):
                raise RunError(f"{path} is damaged (not a list of segments); remove it to "
                               f"start a new record")

    def start(self, precision: str, step: int, seconds: float, units: int, unit: str,
              paused: float = 0.0) -> dict:
        self._base = (seconds, units, paused)
        self.unit = unit
        self.items.append({"started": _now(), "machine": machine_summary(),
                           "precision": precision, "first_step": int(step),
                           "last_step": int(step), "train_seconds": 0.0, f"train_{unit}": 0,
                           f"{unit}_per_s": None})
        reporting.write_json(self.path, self.items)
        return self.items[-1]

    def update(self, step: int, seconds: float, units: int, paused: float = 0.0) -> None:
        """`paused`: the process clock's stopped seconds so far (left out of train_seconds)."""
        if not self.items:
            return
        seg = self.items[-1]
        secs, n = seconds - self._base[0], units - self._base[1]
        seg.update({"last_step": int(step), "train_seconds": round(secs, 3),
                    "paused_seconds": round(paused - self._base[2], 1),
                    f"train_{self.unit}": int(n), "ended": _now(),
                    f"{self.unit}_per_s": round(n / secs, 1) if secs > 0 else None})
        reporting.write_json(self.path, self.items)
