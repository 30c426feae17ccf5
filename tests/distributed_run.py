"""One small training run under a `--distribute` strategy, for tests/test_distribute.py (run
as a program: a multi-worker strategy or logical CPUs must be set up before TensorFlow
starts, so each run is its own process; `python -m tfawd.launch` starts the workers).

  python -m tests.distributed_run --family=lm --distribute=mirrored --cpu_replicas=2 \\
      --model_dir=D --max_steps=20
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo

from tfawd.core import runtime  # noqa: E402

runtime.configure_onednn()
runtime.configure_malloc()

from tfawd.core import distribute  # noqa: E402
from tfawd.core.run_guard import Interrupted  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--family", choices=("lm", "speech"), default="lm")
    p.add_argument("--distribute", choices=distribute.KINDS, default="none")
    p.add_argument("--cpu_replicas", type=int, default=0)
    p.add_argument("--collective_timeout_s", type=float, default=60.0)
    p.add_argument("--model_dir", required=True)
    p.add_argument("--data_dir", default="")
    p.add_argument("--max_steps", type=int, default=20)
    p.add_argument("--checkpoint_every", type=int, default=0)
    p.add_argument("--dropout", type=float, default=0.0, help="lm: every dropout of the model")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--intra_op_threads", type=int, default=1)
    p.add_argument("--inter_op_threads", type=int, default=1)
    a = p.parse_args()
    from absl import logging
    logging.set_verbosity(logging.INFO)  # "Resumed from ..." lines for the tests
    runtime.set_threads(a.inter_op_threads, a.intra_op_threads)
    dist = distribute.make(distribute.DistributeConfig(a.distribute, a.collective_timeout_s,
                                                       a.cpu_replicas))
    try:
        with_dist = lm_run if a.family == "lm" else speech_run
        result = with_dist(a, dist)
    except Interrupted as e:
        print(f"| {e}", flush=True)
        sys.exit(e.exit_code)
    except distribute.COLLECTIVE_ERRORS as e:
        sys.exit(f"error: lost the other workers ({type(e).__name__})")
    print("RESULT " + json.dumps({k: v for k, v in result.items()
                                  if isinstance(v, (int, float, str))}), flush=True)


def lm_run(a, dist):
    from tests.conftest import make_tiny_corpus
    from tfawd.lm.config import LMConfig
    from tfawd.lm.training import train
    d = a.dropout
    cfg = LMConfig(model_dir=a.model_dir, model="awd_lstm", emsize=16, nhid=24, nlayers=3,
                   dropout=d, dropouth=d, dropouti=d, dropoute=d / 2, wdrop=d, alpha=2.0,
                   beta=1.0, wdecay=1.2e-6, optimizer="ntasgd", nonmono=1, lr=5.0,
                   batch_size=a.batch_size, eval_batch_size=4, bptt=8, variable_bptt=True,
                   clip=0.25, max_epochs=100, max_steps=a.max_steps, log_every=5,
                   checkpoint_every=a.checkpoint_every, seed=11, precision="float32",
                   final_test=False)
    return train(cfg, make_tiny_corpus(n_train=1500, n_eval=200), distribution=dist)


def speech_run(a, dist):
    from tfawd.speech.config import SpeechConfig
    from tfawd.speech.training import train
    cfg = SpeechConfig(data_dir=a.data_dir, model_dir=a.model_dir, train_utterances=24,
                       eval_utterances=8, max_digits=2, listener_units=16, speller_units=24,
                       attention_dim=12, char_embed_dim=8, frame_stack=3,
                       batch_size=a.batch_size, max_epochs=100, max_steps=a.max_steps,
                       log_every=5, max_decode_len=12, beam_size=1, seed=5,
                       guided_attention=0.5)
    return train(cfg, distribution=dist)


if __name__ == "__main__":
    main()
