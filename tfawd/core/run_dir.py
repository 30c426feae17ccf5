"""A run folder (`--model_dir`): every file in it, named in one place.

    ckpt/            what resuming needs (weights, optimizer, counters), the last two
    best/            the weights of the best validation score
    tb/              TensorBoard logs (train/, valid/; profiler traces)
    model.json       the model's class and config (`get_config`): what rebuilds it for
                     evaluation, prediction and export without architecture flags
    flags.json       the flags a resumed run must keep (shapes, data, model)
    vocab.txt        the language model's vocabulary, one word per line
    history.json     log lines and validation checks, in order
    commands.txt     every command line that trained the run
    segments.json    each process that trained the run: machine, precision, steps, speed
    results.json     metrics, flags, versions and machine of the finished run
    eval_results.json  evaluation extras (cache pointer, dynamic evaluation)
    evaluation.json  the recogniser's scores from --mode=evaluate
    loss_curve.png   training and validation curves
    attention/, attention.npy  the recogniser's attention maps
    finetune/        a fine-tuning run of the language model (a run folder itself)
    .lock            held by the process training in the folder (run_guard.ModelDirLock)
"""
import os


class RunDir:
    """Paths of the files of the run folder `path` (nothing is created here)."""

    def __init__(self, path: str):
        self.path = path

    def _join(self, name: str) -> str:
        return os.path.join(self.path, name)

    ckpt = property(lambda self: self._join("ckpt"))
    best = property(lambda self: self._join("best"))
    tb = property(lambda self: self._join("tb"))
    model = property(lambda self: self._join("model.json"))
    flags = property(lambda self: self._join("flags.json"))
    vocab = property(lambda self: self._join("vocab.txt"))
    history = property(lambda self: self._join("history.json"))
    commands = property(lambda self: self._join("commands.txt"))
    segments = property(lambda self: self._join("segments.json"))
    results = property(lambda self: self._join("results.json"))
    eval_results = property(lambda self: self._join("eval_results.json"))
    evaluation = property(lambda self: self._join("evaluation.json"))
    loss_curve = property(lambda self: self._join("loss_curve.png"))
    attention = property(lambda self: self._join("attention"))
    attention_npy = property(lambda self: self._join("attention.npy"))
    lock = property(lambda self: self._join(".lock"))
    finetune = property(lambda self: RunDir(self._join("finetune")))

    def __fspath__(self):
        return self.path

    def __repr__(self):
        return f"RunDir({self.path!r})"
