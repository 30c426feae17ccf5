"""The command line: documented flags, flagfiles, one-line rejections of bad values."""
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO


def run_main(*args, env=None):
    return subprocess.run([sys.executable, "main.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=env)


# What TensorFlow's C++ runtime writes to stderr when it loads (absl-format log lines, the CPU
# feature notice's second line), and absl's fixed hint after a flag's error: not ours.
TF_STARTUP = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is called"
                        r"|[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\] "
                        r"|To enable the following instructions: ")
ABSL_FLAG_HINT = "Pass --helpshort or --helpfull to see help on flags."


def our_stderr_lines(stderr: str) -> list:
    return [line for line in stderr.splitlines()
            if line.strip() and not TF_STARTUP.match(line) and line != ABSL_FLAG_HINT]


def test_helpfull_lists_every_flag_with_help():
    out = run_main("--helpfull").stdout
    for flag in ("--flagfile", "--mode", "--data_dir", "--model_dir", "--emsize", "--bptt",
                 "--[no]variable_bptt", "--max_steps", "--time_budget_min", "--profile_steps"):
        assert flag in out, flag
    assert "Where checkpoints, TensorBoard logs" in out


@pytest.mark.parametrize("args, message", [
    (["--dropout=1.0"], "--dropout must be in [0, 1)"),
    (["--dropout=-0.1"], "--dropout must be in [0, 1)"),
    (["--batch_size=-4"], "--batch_size must be positive"),
    (["--nhid=0"], "--nhid must be positive"),
    (["--dataset=wt3"], "value should be one of <wikitext2|ptb|spoken_digits|"),
    (["--model=las", "--dataset=wikitext2"], "--dataset=wikitext2 is not data of --model=las"),
    (["--dataset=spoken_digits"], "--dataset=spoken_digits is not data of --model=lstm"),
    (["--model=las", "--dataset=spoken_digits", "--teacher_forcing=1.5"],
     "--teacher_forcing must be in [0, 1]"),
    (["--model=las", "--dataset=spoken_digits", "--vtlp=0.7"], "--vtlp must be in [0, 0.5)"),
    (["--model=las", "--dataset=spoken_digits", "--features=cepstra"],
     "--features=cepstra exists for --dataset=an4 only"),
    (["--model=las", "--dataset=an4", "--features=cepstra", "--vtlp=0.1"],
     "has no mel bands for --vtlp to warp: use --features=logmel"),
    (["--model=las", "--dataset=spoken_digits", "--mode=generate"],
     "--mode=generate is not available for --model=las"),
    (["--mode=dance"], "value should be one of"),
    (["--profile_steps=10,5"], "--profile_steps must be START,END"),
    (["--tie_weights", "--emsize=10", "--nhid=20"], "--tie_weights needs --nhid equal"),
    (["--average_last_min=10"], "--average_last_min needs --optimizer=ntasgd and a longer"),
    (["--optimizer=ntasgd", "--time_budget_min=5", "--average_last_min=10"],
     "--average_last_min needs --optimizer=ntasgd and a longer --time_budget_min"),
    (["--distribute=multi_worker"], "--distribute=multi_worker needs TF_CONFIG"),
    (["--distribute=gpus"], "value should be one of <none|mirrored|multi_worker>"),
    (["--cpu_replicas=-1"], "--cpu_replicas must be >= 0"),
    (["--mode=generate", "--top_p=0"], "--top_p must be in (0, 1]"),
    (["--mode=generate", "--num_tokens=-3"], "--num_tokens must be positive"),
    (["--mode=generate", "--top_k=-1"], "--top_k must be >= 0"),
    (["--cache_thetas=0.5,x"], "--cache_thetas must be comma-separated"),
])
def test_bad_values_are_rejected_with_a_one_line_message(args, message):
    """Apart from TensorFlow's start-up log, stderr is one line: the message, naming the flag
    at fault (the last one given in each case)."""
    result = run_main(*args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = our_stderr_lines(result.stderr)
    assert len(lines) == 1, lines
    assert message in lines[0]
    assert args[-1].split("=")[0] in lines[0]


def test_a_stray_argument_is_named_on_the_last_line_below_the_usage():
    """absl's UsageError prints the usage (main.py's doc and flags) first, so this one is not
    a single line: the error is the last line, and names the argument."""
    result = run_main("stray")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = our_stderr_lines(result.stderr)
    assert lines[-1] == "unexpected arguments ['stray']; flags look like --name=value"
    assert lines[0] == "tfawd entry point: parses flags and dispatches to a mode."


def test_non_training_modes_run_on_the_chief_only(tmp_path):
    """--distribute=multi_worker spreads training; worker 1 of an evaluation ends at once."""
    import json
    import os
    config = json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                         "task": {"type": "worker", "index": 1}})
    result = run_main("--mode=evaluate", "--distribute=multi_worker",
                      f"--model_dir={tmp_path}", env={**os.environ, "TF_CONFIG": config})
    assert result.returncode == 0, result.stderr
    assert "worker 1: --mode=evaluate runs on the chief (worker 0) only" in result.stdout
    assert os.listdir(tmp_path) == []


def test_config_files_parse(tmp_path, monkeypatch):
    """Every committed flagfile is accepted by the flag parser (validators included), from
    the repository's root as the README runs them (a flagfile may include another)."""
    from absl import flags
    monkeypatch.chdir(REPO)

    from tfawd import families
    from tfawd.core import registry
    for cfg in sorted((REPO / "configs").glob("*.cfg")):
        fv = flags.FlagValues()
        families.define_flags(fv)
        fv([sys.argv[0], f"--flagfile={cfg}"])
        family = registry.family_of(fv["model"].value)
        assert fv["dataset"].value in family.datasets, cfg
        assert family.from_flags(fv).model_dir, cfg


def test_a_trained_run_answers_for_the_flags_not_given(tmp_path):
    """`--mode=evaluate --model_dir=R` alone: family, data and splits come from R's record;
    flags given (here --eval_utterances) win; where things are (data_dir) never comes from it."""
    import json

    from absl import flags

    from tfawd import families
    from tfawd.core.run_flags import adopt_recorded_flags
    (tmp_path / "results.json").write_text(json.dumps({"flags": {
        "model": "las", "dataset": "spoken_digits", "max_digits": 3, "eval_utterances": 40,
        "data_dir": "/elsewhere", "seed": 7, "unknown_old_flag": 1}}))
    fv = flags.FlagValues()
    families.define_flags(fv)
    fv(["main.py", f"--model_dir={tmp_path}", "--eval_utterances=12"])
    adopted = adopt_recorded_flags(fv, str(tmp_path))
    assert sorted(adopted) == ["dataset", "max_digits", "model", "seed"]
    assert (fv.model, fv.dataset, fv.max_digits, fv.seed) == ("las", "spoken_digits", 3, 7)
    assert fv.eval_utterances == 12 and fv.data_dir != "/elsewhere"
    assert adopt_recorded_flags(fv, str(tmp_path / "no_run")) == []
