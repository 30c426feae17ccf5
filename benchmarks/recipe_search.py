"""Equal-wall-clock A/B runs of a config's variants: which recipe learns most in a fixed time.

Each variant is the config plus a few flags, trained from scratch by `main.py` in its own
process for --minutes of training (`--time_budget_min`; the run then validates where it
stopped, so no minute is thrown away), without the final test pass. The variants run one after
another on the same machine, so they see the same CPU. Writes one JSON: per variant its flags,
validation perplexity (the best of its epoch ends and the stop), epochs, steps, tokens/s and
validation curve, plus the machine and the command; variants already in --out with the same
minutes are kept, not rerun (a search can be continued).

  python benchmarks/recipe_search.py --config=configs/lstm_base_wt2_cpu.cfg --minutes=8 \
      --variant="b20:" --variant="b40:--batch_size=40" \
      --out=results/recipe_search_lstm_base_wt2_cpu.json
"""
import json
import os
import subprocess
import sys
import tempfile

import common  # first: sys.path and oneDNN
from absl import app, flags

flags.DEFINE_string("config", None, "The flagfile every variant starts from.")
flags.DEFINE_multi_string("variant", [], "NAME:FLAGS, e.g. 'bs40:--batch_size=40 --lr=30' "
                          "(empty FLAGS: the config as it is).")
flags.DEFINE_float("minutes", 10.0, "Training minutes per variant.")
flags.DEFINE_string("out", None, "The JSON to write (and to continue).")
flags.DEFINE_string("work_dir", None, "Where the variants' run folders go (default: a "
                    "temporary folder, removed at the end).")
flags.mark_flags_as_required(["config", "out"])
FLAGS = flags.FLAGS


def parse_variant(text: str):
    """'name:--a=1 --b' -> ('name', ['--a=1', '--b'])."""
    name, sep, rest = text.partition(":")
    if not sep or not name.strip():
        raise app.UsageError(f"--variant={text!r}: write NAME:FLAGS (FLAGS may be empty)")
    return name.strip(), rest.split()


def run_variant(name, extra, model_dir) -> dict:
    args = [sys.executable, os.path.join(common.REPO, "main.py"), f"--flagfile={FLAGS.config}",
            f"--model_dir={model_dir}", f"--time_budget_min={FLAGS.minutes}",
            "--max_epochs=100000", "--nofinal_test", *extra]
    out, (seconds,) = common.timed(
        lambda: subprocess.run(args, cwd=common.REPO, capture_output=True, text=True))
    if out.returncode != 0:  # absl's "Pass --helpshort" hint comes after the reason
        lines = out.stderr.strip().splitlines()
        reasons = [line for line in lines if "error" in line.lower()]
        return {"flags": extra, "error": (reasons or lines)[-3:]}
    with open(os.path.join(model_dir, "results.json")) as f:
        res = json.load(f)
    with open(os.path.join(model_dir, "history.json")) as f:
        curve = [[h["step"], h.get("epoch"), round(h["val_ppl"], 2)]
                 for h in json.load(f) if "val_ppl" in h]
    return {"flags": extra, "val_ppl": res["val_ppl"], "epochs_completed": res["epochs_completed"],
            "steps": res["steps"], "train_seconds": res["train_seconds"],
            "train_tokens_per_s": res["train_tokens_per_s"], "precision": res.get("precision"),
            "num_parameters": res["num_parameters"], "valid_curve": curve,
            "wall_seconds": seconds}


def main():
    variants = [parse_variant(v) for v in FLAGS.variant]
    if not variants:
        raise app.UsageError("give at least one --variant=NAME:FLAGS")
    done = {}
    if os.path.exists(FLAGS.out):
        with open(FLAGS.out) as f:
            previous = json.load(f)
        if previous.get("minutes") == FLAGS.minutes and previous.get("config") == FLAGS.config:
            done = previous["variants"]
    work = FLAGS.work_dir or tempfile.mkdtemp(prefix="recipe_search_")
    result = {**common.record("recipe_search"), "config": FLAGS.config,
              "minutes": FLAGS.minutes, "variants": done}
    for name, extra in variants:
        if name in done and "error" not in done[name]:
            continue
        print(f"{name}: {' '.join(extra) or '(the config)'} for {FLAGS.minutes:g} min",
              flush=True)
        result["variants"][name] = run_variant(name, extra, os.path.join(work, name))
        print(f"  -> {json.dumps(result['variants'][name])[:300]}", flush=True)
        ranked = sorted((v["val_ppl"], n) for n, v in result["variants"].items() if "val_ppl" in v)
        result["best"] = ranked[0][1] if ranked else None
        common.write_json(FLAGS.out, result)  # after every variant: a stopped search keeps them
    print(json.dumps({n: v.get("val_ppl") for n, v in result["variants"].items()}), flush=True)


if __name__ == "__main__":
    common.run(main)
