"""README tables generated from the results files of real runs (never typed by hand).

  python -m tfawd.core.readme_tables              # print the tables
  python -m tfawd.core.readme_tables --write      # replace the generated block of README.md

Sources, all under `results/`: `<run>.json` (a training run's results.json, copied there by
`make train`), `<run>_eval.json` (its eval_results.json: cache pointer, dynamic evaluation,
both: the cache on top of dynamic evaluation),
`<run>_loss_curve.png`, and `lm_throughput*.json` (benchmarks/lm_throughput.py). Published
figures of the seeds and papers (`results/published.json`) are listed apart and labelled as
theirs.
"""
import glob
import json
import os
import re
import sys

START, END = "<!-- report:start -->", "<!-- report:end -->"

PUBLISHED_FILE = "published.json"  # in the results folder: figures of the seeds and papers


def published(results_dir: str = "results") -> dict:
    """The published figures the documents compare with (results/published.json)."""
    path = os.path.join(results_dir, PUBLISHED_FILE)
    return _load(path) if os.path.exists(path) else {}


def _load(path):
    with open(path) as f:
        return json.load(f)


def describe(flags: dict) -> str:
    adaptive = ", adaptive softmax" if flags.get("softmax") == "adaptive" else ""
    if flags["model"] == "awd_lstm":
        sizes = [flags["nhid"]] * (flags["nlayers"] - 1) + [flags["emsize"]]
        return f"AWD-LSTM {flags['emsize']}-{'/'.join(map(str, sizes))}, tied{adaptive}"
    tied = "tied" if flags.get("tie_weights") else "untied"
    return f"{flags['nlayers']}-layer LSTM {flags['emsize']}/{flags['nhid']}, {tied}{adaptive}"


def _pair(section) -> str:
    if not section:
        return "-"
    return f"{section['valid']['ppl']:.2f} / {section['test']['ppl']:.2f}"


RUNS_FOLDER = re.compile(r"--model_dir=/\S*?/(?:tfawd-)?runs/(\S+?)/?(?=\s|$)")
ABSOLUTE_RUN_DIR = re.compile(r"--model_dir=/\S*/([^/\s]+)/?(?=\s|$)")


def as_typed_here(command: str) -> str:
    """`python main.py ...` with a run folder given as an absolute path on the machine that
    ran it (/root/tfawd-runs/x, /home/u/runs/x/finetune) shown relative (runs/x,
    runs/x/finetune), so the command runs as written on any clone: where the folder lives
    does not change the result."""
    command = command.replace("main.py", "python main.py", 1)
    command = RUNS_FOLDER.sub(r"--model_dir=runs/\1", command)
    return ABSOLUTE_RUN_DIR.sub(r"--model_dir=runs/\1", command)


def shown_command(run: dict) -> str:
    """The command that produced a run (`as_typed_here`), with the earlier ones when it was
    resumed."""
    commands = [as_typed_here(c) for c in run.get("commands") or [run.get("command", "")]]
    return "`, resumed by `".join(commands)


def run_rows(results_dir: str) -> list:
    rows = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        run = _load(path)
        if "val_ppl" not in run or "flags" not in run:
            continue
        name = os.path.basename(path)[:-len(".json")]
        extra_path = os.path.join(results_dir, f"{name}_eval.json")
        extra = _load(extra_path) if os.path.exists(extra_path) else {}
        curve = os.path.join(results_dir, f"{name}_loss_curve.png")
        rows.append({
            "name": name, "model": describe(run["flags"]), "dataset": run["dataset"],
            "command": shown_command(run),
            "val": run["val_ppl"], "test": run["test_ppl"],
            "cache": _pair(extra.get("cache")), "dynamic": _pair(extra.get("dynamic_eval")),
            "both": _pair(extra.get("dynamic_eval_cache")),
            "epochs": run["epochs_completed"], "minutes": run["train_seconds"] / 60,
            "tokens_per_s": run["train_tokens_per_s"],
            "machine": _machine(run), "precision": run.get("precision", "not recorded"),
            "curve": os.path.basename(curve) if os.path.exists(curve) else None,
            "eval_commands": [(section, _timed(extra[section]))
                              for section in ("cache", "dynamic_eval")
                              if extra.get(section, {}).get("command")],
        })
    return rows


def _timed(section: dict) -> str:
    """'`command` (valid N min, test N min)' of an eval_results.json section."""
    minutes = ", ".join(f"{split} {section[split]['seconds'] / 60:.0f} min"
                        for split in ("valid", "test") if "seconds" in section.get(split, {}))
    command = as_typed_here(section["command"])
    return f"`{command}`" + (f" ({minutes})" if minutes else "")


def results_table(results_dir: str = "results") -> str:
    lines = ["| model | data | val ppl | test ppl | + cache (val / test) | + dynamic eval "
             "(val / test) | + both | epochs | training | tokens/s | machine | precision | run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in run_rows(results_dir):
        curve = f", [loss curve](results/{r['curve']})" if r["curve"] else ""
        lines.append(
            f"| {r['model']} | {r['dataset']} | {r['val']:.2f} | {r['test']:.2f} | {r['cache']} "
            f"| {r['dynamic']} | {r['both']} | {r['epochs']} | {r['minutes']:.0f} min | "
            f"{r['tokens_per_s']:,.0f} | {r['machine']} | {r['precision']} | "
            f"`{r['command']}` ([json](results/{r['name']}.json)"
            f"{curve}) |")
    evals = [f"- {r['name']} {section.replace('_', ' ')}: {text}"
             for r in run_rows(results_dir) for section, text in r["eval_commands"]]
    if evals:
        lines += ["", "Evaluation extras, run on the trained model:", ""] + evals
    lines += ["", "Published figures, for comparison (theirs, not produced here):", "",
              "| source | model | val ppl | test ppl |", "|---|---|---|---|"]
    lines += [f"| {p['source']} | {p['model']} | {p['valid']} | {p['test']} |"
              for p in published(results_dir).get("wikitext2_ppl", [])]
    return "\n".join(lines)


def _machine(run: dict) -> str:
    """'AVX-512 + AVX512_BF16 (AMD EPYC, 2 cores)': the machine a run recorded."""
    m = run.get("machine")
    if not isinstance(m, dict):
        return "not recorded"
    return f"{machine_class(m)} ({m.get('cpu', '?')}, {m.get('cores', '?')} cores)"


def machine_class(m: dict) -> str:
    """The kind of CPU a benchmark ran on, as far as speed goes: what multiplies (AMX, AVX-512
    with bf16, AVX-512, AVX2), and whether AVX2 was imposed by caps (`runtime.ISA_CAPS`)."""
    caps = m.get("isa_caps", {})
    if "AVX2" in caps.get("ONEDNN_MAX_CPU_ISA", "").upper():
        return f"AVX2 (emulated: {m['cpu']} with ISA caps)"
    units = m.get("bf16_units") or []
    if "amx_bf16" in units:
        return "AMX bf16"
    if "avx512_bf16" in units:
        return "AVX-512 + AVX512_BF16"
    if "avx512f" in m.get("isa", []):
        return "AVX-512"
    return "AVX2" if "isa" in m else "unrecorded"


def performance_table(results_dir: str = "results") -> str:
    """One row per benchmark JSON, grouped by machine class: times compare within a class."""
    paths = sorted(glob.glob(os.path.join(results_dir, "lm_throughput*.json")))
    if not paths:
        return ""
    lines = ["| machine class | config | precision | oneDNN | tfawd tokens/s | reference "
             "tokens/s | ratio (rounds) | fraction of matmul peak | eval tokens/s (batch 10 / 1) "
             "| CPU | json |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for path in paths:
        b = _load(path)
        ref = b.get("reference_tokens_per_s")
        ev = list(b["eval_tokens_per_s"].values())
        m = b["machine"]
        rounds = "/".join(f"{r['ratio']:.2f}" for r in b["rounds"] if "ratio" in r)
        ref_text = f"{ref:,.0f} | {b['ratio_median']:.2f}x ({rounds})" if ref else "- | -"
        onednn = m.get("onednn", {}).get("enabled")
        softmax = b["model"].get("softmax", "full")
        if softmax != "full" and ref:  # the reference always trains the full softmax
            ref_text += f" ({softmax} against the reference's full softmax)"
        rows.append((machine_class(m), path, (
            f"| {machine_class(m)} | `{b['config']}` {b['model']['emsize']}/{b['model']['nhid']} "
            f"batch {b['model']['batch_size']}"
            f"{'' if softmax == 'full' else f', {softmax} softmax'} | {b['precision']} | "
            f"{'-' if onednn is None else 'on' if onednn else 'off'} | "
            f"{b['tfawd_tokens_per_s']:,.0f} | {ref_text} | "
            f"{b['achieved_fraction_of_peak']:.0%} of {b['matmul_peak_gflops']:.0f} GFLOP/s | "
            f"{ev[0]:,.0f} / {ev[-1]:,.0f} | {m['cpu']}, {m['cores']} cores | "
            f"[json](results/{os.path.basename(path)}) |")))
    lines += [row for _, _, row in sorted(rows)]
    lines += _commands(paths)
    return "\n".join(lines)


def _commands(paths) -> list:
    """The command of each benchmark JSON that recorded one."""
    runs = [(os.path.basename(p), _load(p)) for p in paths]
    return [""] + [f"- [{name}](results/{name}): `{run['command']}` (commit {run.get('commit')})"
                   for name, run in runs if run.get("command")]


def precision_table(results_dir: str = "results") -> str:
    """float32 vs mixed_bfloat16 training of one config (benchmarks/precision_guard.py)."""
    paths = sorted(glob.glob(os.path.join(results_dir, "precision_guard*.json")))
    if not paths:
        return ""
    lines = ["| config | steps | mean loss over steps, float32 / bf16 (difference) | "
             "val ppl float32 / bf16 (difference) | rounding-only control: loss / ppl "
             "difference | within tolerance | json |",
             "|---|---|---|---|---|---|---|"]
    for path in paths:
        g = _load(path)
        loss, ppl, control = g["mean_loss"], g["val_ppl"], g.get("control")
        lo, hi = g["window"]
        floor = (f"{control['mean_loss_rel_diff']:.2%} / {control['val_ppl_rel_diff']:.2%}"
                 if control else "-")
        lines.append(
            f"| `{g['config']}` | {g['steps']} | {lo}-{hi}: {loss['float32']:.4f} / "
            f"{loss['mixed_bfloat16']:.4f} ({g['mean_loss_rel_diff']:.2%}) | "
            f"{ppl['float32']:.2f} / {ppl['mixed_bfloat16']:.2f} ({g['val_ppl_rel_diff']:.2%}) | "
            f"{floor} | {'yes' if g['holds'] else 'no'} ({g['tolerance']:.0%}) | "
            f"[json](results/{os.path.basename(path)}) |")
    lines += _commands(paths)
    return "\n".join(lines)


def _rates(run, split) -> str:
    """'CER / WER' of a split, greedy (beam) when both were decoded."""
    greedy, beam = run.get(f"{split}_greedy"), run.get(f"{split}_beam")
    if not greedy:
        return "-"
    text = f"{greedy['cer']:.2%} / {greedy['wer']:.2%}"
    return text + (f" ({beam['cer']:.2%} / {beam['wer']:.2%})" if beam else "")


def _diagonality(d) -> str:
    text = f"{d['monotonic']:.1%}"
    if "monotonic_within_tolerance" in d:
        text += f" ({d['monotonic_within_tolerance']:.1%} within {d['tolerance']} frames)"
    return text


def speech_table(results_dir: str = "results") -> str:
    """One row per speech run (results.json with model las)."""
    runs = [(p, _load(p)) for p in sorted(glob.glob(os.path.join(results_dir, "*.json")))]
    runs = [(p, r) for p, r in runs if isinstance(r, dict) and r.get("model") == "las"
            and "flags" in r]  # (histories are lists)
    if not runs:
        return ""
    lines = ["CER / WER with greedy decoding (beam search in brackets). Test: digits test takes "
             "of the training speakers, or held-out eSpeak voices; held-out: a speaker never "
             "heard in training. Diagonality: share of decoder steps whose attention peak does "
             "not move backwards (first 10 validation utterances; in brackets, moving back by "
             "at most a few encoder frames allowed).", "",
             "| data | valid | test | held-out speaker | diagonality | epochs | training | machine "
             "| run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for path, r in runs:
        name = os.path.basename(path)[:-len(".json")]
        command = shown_command(r)
        lines.append(
            f"| {r['dataset']} | {_rates(r, 'valid')} | {_rates(r, 'test')} | "
            f"{_rates(r, 'heldout')} | {_diagonality(r['diagonality_first10'])} | "
            f"{r.get('epochs_completed', r.get('epochs'))} | "
            f"{r['train_seconds'] / 60:.0f} min | {_machine(r)} | `{command}` "
            f"([json](results/{name}.json), [attention](results/{name}_attention/)) |")
    return "\n".join(lines)


def _spread(stat) -> str:
    """'5.42% (5.10-5.74%)': the mean over the seeds (min-max)."""
    return f"{stat['mean']:.2%} ({stat['min']:.2%}-{stat['max']:.2%})"


def seeds_table(results_dir: str = "results") -> str:
    """One row per decoding of each several-seed run (benchmarks/seed_spread.py)."""
    spreads = [(p, _load(p)) for p in sorted(glob.glob(os.path.join(results_dir, "*.json")))]
    spreads = [(p, r) for p, r in spreads
               if isinstance(r, dict) and r.get("benchmark") == "seed_spread"]
    if not spreads:
        return ""
    lines = ["Several seeds of one config (benchmarks/seed_spread.py): the mean over the seeds "
             "with the range (min-max) in brackets. Decodings: greedy and beam use the "
             "attention decoder alone; ctc the CTC head alone (prefix beam search); joint the "
             "beam search scoring each prefix by attention and CTC (`--ctc_decode_weight`). "
             "Test speakers are never heard in training; valid holds out training speakers.",
             "", "| data | seeds | decoding | valid CER | test CER | test WER | held-out "
             "speaker CER | diagonality | training per seed | machine | run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for path, r in spreads:
        name = os.path.basename(path)[:-len(".json")]
        summary, seeds = r["summary"], ", ".join(map(str, r["seeds"]))
        diag = summary.get("diagonality_monotonic")
        diag = f"{diag['mean']:.1%}" if diag else "-"
        minutes = f"{summary['train_seconds']['mean'] / 60:.0f} min"
        if "wall_seconds_this_run" in summary:  # validations and decoding included
            minutes += f" ({summary['wall_seconds_this_run']['mean'] / 60:.0f} min in all)"
        command = f"`{r['command']}`"
        machines = ", ".join(sorted({_machine(run) for run in r["runs"].values()}))
        for decoding in ("greedy", "beam", "ctc", "joint"):
            test = summary.get(f"test_{decoding}")
            if not test:
                continue
            run = (f"{command} ([json](results/{name}.json)"
                   + (f", [attention](results/{name}_attention/)" if r.get("attention") else "")
                   + ")")
            command = "the same runs"
            valid, heldout = (summary.get(f"{split}_{decoding}") for split in ("valid", "heldout"))
            lines.append(
                f"| {r['dataset']} | {seeds} | {decoding} | "
                f"{_spread(valid['cer']) if valid else '-'} | {_spread(test['cer'])} | "
                f"{_spread(test['wer'])} | {_spread(heldout['cer']) if heldout else '-'} | "
                f"{diag} | {minutes}, {r['conditions']} | {machines} | {run} |")
    lines += ["", "Published AN4 figures, for comparison (theirs, from audio; ours start from "
              "the 13 Sphinx cepstra, the only form of AN4 here):", "",
              "| source | system | data | test CER | test WER |", "|---|---|---|---|---|"]
    lines += [f"| {p['source']} | {p['system']} | an4 | {p['cer']}% | "
              + (f"{p['wer']}% |" if p["wer"] is not None else "- |")
              for p in published(results_dir).get("an4_test", {}).get("systems", [])]
    return "\n".join(lines)


def render(results_dir: str = "results") -> str:
    parts = [START, "", "### Language models", "", results_table(results_dir)]
    speech = speech_table(results_dir)
    if speech:
        parts += ["", "### Speech recognition (Listen-Attend-Spell)", "", speech]
    seeds = seeds_table(results_dir)
    if seeds:
        parts += ["", "#### Several seeds", "", seeds]
    perf = performance_table(results_dir)
    if perf:
        parts += ["", "### Training speed (benchmarks/lm_throughput.py)", "", perf]
    guard = precision_table(results_dir)
    if guard:
        parts += ["", "### Mixed precision quality guard (benchmarks/precision_guard.py)", "",
                  guard]
    return "\n".join(parts + ["", END])


def write_readme(readme: str = "README.md", results_dir: str = "results") -> None:
    """Replaces the block between the report markers of `readme` with fresh tables."""
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START} ... {END} block to replace")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    fresh = head + render(results_dir) + tail  # rendered before the file is touched
    with open(f"{readme}.tmp", "w", encoding="utf-8") as f:
        f.write(fresh)
    os.replace(f"{readme}.tmp", readme)


if __name__ == "__main__":
    if "--write" in sys.argv[1:]:
        write_readme()
    else:
        print(render())
