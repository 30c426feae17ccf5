"""Training seconds that leave out the time the process was stopped (issue 24): a run that is
paused with SIGSTOP to free the cores for a measurement, or whose VM is suspended, reports
its speed over the time it actually ran."""
import threading
import time


class PauseAwareClock:
    """Seconds that leave out the time the process was stopped (SIGSTOP to free the cores
    for a measurement, a suspended VM): a daemon thread ticks every `tick` seconds, and a gap
    between ticks longer than `tick + slack` counts as paused. `now()` is `perf_counter()`
    less the pauses seen so far; training seconds are measured on it."""

    def __init__(self, tick: float = 0.5, slack: float = 4.5):
        self.tick, self.slack, self.paused = tick, slack, 0.0
        self._lock = threading.Lock()
        self._last = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True, name="pause-clock")
        self._thread.start()

    def _run(self):
        while True:
            time.sleep(self.tick)
            t = time.perf_counter()
            with self._lock:
                gap = t - self._last
                if gap > self.tick + self.slack:
                    self.paused += gap - self.tick
                self._last = t

    def now(self) -> float:
        with self._lock:
            return time.perf_counter() - self.paused


CLOCK = None  # the process's PauseAwareClock, started by the first loop


def clock() -> PauseAwareClock:
    global CLOCK
    if CLOCK is None:
        CLOCK = PauseAwareClock()
    return CLOCK
