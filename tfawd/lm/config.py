"""Run configuration: one dataclass, from which the absl flags are generated.

Library code takes an `LMConfig`; only `main.py` touches absl. Each field's metadata carries the
flag's help text and, for enums, its choices; validators give one-line errors for bad values.
"""
import dataclasses

from absl import flags

from pipelines.corpus_files import default_data_dir
from tfawd.core import runtime
from tfawd.core.flags import RunFlags, config_from_flags, define_fields
from tfawd.core.flags import field as _f

OPTIMIZERS = ("sgd", "ntasgd")
AUTO = "auto"  # --adaptive_cutoffs chosen from the corpus (`tfawd.lm.models.resolve_cutoffs`)



@dataclasses.dataclass
class LMConfig(RunFlags):
    """The language models' run (`RunFlags`, with their defaults) and their own flags."""
    # Model
    emsize: int = _f(650, "Word embedding size.")
    nhid: int = _f(650, "Hidden units per LSTM layer.")
    nlayers: int = _f(2, "Number of LSTM layers.")
    dropout: float = _f(0.5, "lstm: dropout on the embedding output, between layers and on the "
                             "output. awd_lstm: locked dropout on the last layer's output.")
    tie_weights: bool = _f(False, "lstm: share the embedding matrix with the output layer "
                                  "(needs nhid == emsize). awd_lstm is always tied.")
    dropouth: float = _f(0.2, "awd_lstm: locked dropout between LSTM layers.")
    dropouti: float = _f(0.65, "awd_lstm: locked dropout on the embedding output.")
    dropoute: float = _f(0.1, "awd_lstm: embedding dropout (whole words).")
    wdrop: float = _f(0.5, "awd_lstm: DropConnect on the hidden-to-hidden matrices.")
    alpha: float = _f(0.0, "AR: alpha * mean(dropped last-layer output^2) (AWD-LSTM 4.6).")
    beta: float = _f(0.0, "TAR: beta * mean(raw last-layer output[t+1] - output[t])^2.")
    softmax: str = _f("full", "Output layer. full: one softmax over the vocabulary (the paper). "
                              "adaptive: the adaptive softmax (Grave et al. 2017) tied to "
                              "adaptive input embeddings (Baevski & Auli 2019), the vocabulary "
                              "ordered by frequency; exact normalised probabilities everywhere.",
                      choices=("full", "adaptive"))
    adaptive_cutoffs: str = _f("auto", "--softmax=adaptive: word ranks where the frequency "
                                       "clusters start (increasing, below the vocabulary size), "
                                       "or auto: a head of the 2,000 most frequent words (a "
                                       "fifth of a smaller vocabulary), then tail clusters of "
                                       "at most 1.5 / --lr of the training tokens each (larger "
                                       "ones make SGD oscillate on their logit), resolved "
                                       "from the training split and saved with the model.")
    adaptive_div: int = _f(1, "--softmax=adaptive: each cluster's embedding is this many times "
                              "narrower than the previous one's (Baevski & Auli use 4 with 2-3 "
                              "clusters; 1 keeps every cluster at full width).")
    precision: str = _f("auto", "auto: mixed_bfloat16 where the hardware multiplies bfloat16 "
                                "natively (CPUs with AMX / AVX512_BF16, GPUs of compute capability "
                                ">= 8), float32 elsewhere (bf16 would be emulated, slower). "
                                "mixed_bfloat16: bf16 matmuls with float32 weights, softmax, loss "
                                "and carried state. The precision used is in results.json.",
                        choices=("auto", "float32", "mixed_bfloat16"))
    # Stream
    eval_batch_size: int = _f(10, "Validation batch size (the reference uses 10).")
    test_batch_size: int = _f(1, "Test batch size (the reference uses 1).")
    bptt: int = _f(35, "Truncated-BPTT window length.")
    variable_bptt: bool = _f(False, "Draw each window length as in AWD-LSTM section 4.1.")
    bptt_max_len: int = _f(0, "Cap on drawn window lengths (0: no cap).")
    # Optimisation
    optimizer: str = _f("sgd", "sgd: SGD, lr divided by --lr_decay when validation does not "
                               "improve. ntasgd: NT-ASGD (AWD-LSTM section 3).", choices=OPTIMIZERS)
    lr_decay: float = _f(4.0, "sgd: divide the learning rate by this when validation does not "
                              "improve (1: never).")
    wdecay: float = _f(0.0, "L2 weight decay.")
    nonmono: int = _f(5, "ntasgd: switch to averaging when validation is worse than the best "
                         "of all checks but the last nonmono.")
    average_last_min: float = _f(0.0, "ntasgd with --time_budget_min: also switch to averaging "
                                      "at the first epoch end that leaves less than this many "
                                      "minutes of the budget, for budgets too short for the "
                                      "non-monotone trigger to fire (0: the trigger alone).")
    average_after_epochs: int = _f(0, "ntasgd: switch to averaging at the end of this epoch "
                                      "at the latest (0: the non-monotone trigger alone). An "
                                      "epoch count, not a clock, so a run that resumes on "
                                      "machines of other speeds switches at the same point.")
    # Evaluation extras (--mode=evaluate / tune_cache / tune_dynamic_eval)
    cache_window: int = _f(0, "Continuous cache pointer over this many previous positions "
                              "(0: off; the paper uses 3785 on WikiText-2).")
    cache_theta: float = _f(0.662, "Cache pointer: inverse temperature of the dot products.")
    cache_lambda: float = _f(0.1279, "Cache pointer: weight of the cache in the mixture.")
    cache_thetas: str = _f("0.3,0.5,0.662,0.8,1.0,1.25,1.5,2.0",
                           "--mode=tune_cache: thetas to try (the paper's WT2 choice is 0.662; "
                           "weaker models want a larger theta and lambda).")
    cache_lambdas: str = _f("0.05,0.1,0.1279,0.15,0.2,0.3,0.4,0.5",
                            "--mode=tune_cache: lambdas to try.")
    dynamic_eval_lr: float = _f(0.0, "Dynamic evaluation learning rate eta (0: off).")
    dynamic_eval_lambda: float = _f(0.002, "Dynamic evaluation decay toward the trained weights.")
    dynamic_eval_bptt: int = _f(5, "Dynamic evaluation segment length.")
    dynamic_eval_grad_batches: int = _f(0, "Training windows (batch 100) for the gradient "
                                           "statistics of dynamic evaluation (0: all).")
    dynamic_eval_lrs: str = _f("3e-5,5e-5,1e-4", "--mode=tune_dynamic_eval: learning rates to try "
                                                  "(scaled by dynamic_eval_bptt / 5).")
    dynamic_eval_lambdas: str = _f("0.001,0.002,0.005", "--mode=tune_dynamic_eval: decays to try "
                                                        "(scaled by dynamic_eval_bptt / 5).")
    dynamic_eval_tune_tokens: int = _f(30000, "--mode=tune_dynamic_eval: validation tokens "
                                              "used for the search (0: all).")
    final_test: bool = _f(True, "After training, also score the test split (at "
                                "--test_batch_size); recipe searches turn it off.")

    # Not a flag: --precision as given, before `auto` was resolved (a resumed run keeps its
    # recorded precision when this is `auto`: `training.keep_run_precision`).
    precision_given: str | None = dataclasses.field(default=None, metadata={"flag": False})

    def adaptive_cutoffs_list(self) -> list:
        """--adaptive_cutoffs as ints when --softmax=adaptive (else no clusters); `auto` must
        have been resolved from the corpus first (`tfawd.lm.models.resolve_cutoffs`)."""
        if self.softmax != "adaptive":
            return []
        if self.adaptive_cutoffs == AUTO:
            raise ValueError("--adaptive_cutoffs=auto is resolved from the training corpus "
                             "(tfawd.lm.models.resolve_cutoffs) before a model is built")
        return [int(c) for c in self.adaptive_cutoffs.split(",") if c.strip()]



POSITIVE = ("emsize", "nhid", "nlayers", "eval_batch_size", "test_batch_size", "bptt",
            "nonmono", "dynamic_eval_bptt")
NON_NEGATIVE = ("bptt_max_len", "average_last_min", "average_after_epochs", "alpha", "beta",
                "wdecay",
                "cache_window", "cache_theta", "dynamic_eval_lr", "dynamic_eval_lambda",
                "dynamic_eval_tune_tokens", "dynamic_eval_grad_batches")
FLOAT_LISTS = ("cache_thetas", "cache_lambdas", "dynamic_eval_lrs", "dynamic_eval_lambdas")


def float_list(text: str) -> list:
    """'0.1,0.2' -> [0.1, 0.2]."""
    return [float(x) for x in text.split(",") if x.strip()]


def _valid_float_list(text):
    try:
        return len(float_list(text)) > 0 and all(x >= 0 for x in float_list(text))
    except ValueError:
        return False
PROBABILITIES = ("dropout", "dropouth", "dropouti", "dropoute", "wdrop")


def _valid_cutoffs(value):
    if value == AUTO:
        return True
    try:
        cutoffs = [int(c) for c in value.split(",") if c.strip()]
    except ValueError:
        return False
    return bool(cutoffs) and cutoffs[0] > 0 and all(a < b for a, b in zip(cutoffs, cutoffs[1:]))


@dataclasses.dataclass
class InferenceConfig:
    """What --mode=predict and --mode=generate read, write and how they decode."""
    contexts: str = _f("", "predict: a .npy of int ids [B, T] or a text file, one context per "
                           "line (no <eos> appended).")
    targets: str = _f("", "predict: optional .npy of the next word ids [B] (or a text file of "
                          "one word per line): the mean NLL of the prediction is reported.")
    prompt: str = _f("", "generate: one prompt (text).")
    prompts_file: str = _f("", "generate: a text file of prompts, one per line.")
    output: str = _f("", "predict: the scores .npy [B, V]; generate: the continuations, one "
                         "line per prompt (default: under --model_dir).")
    num_tokens: int = _f(50, "generate: tokens to generate per prompt.")
    method: str = _f("sample", "generate: decoding.", choices=("greedy", "sample", "beam"))
    temperature: float = _f(1.0, "generate (sample): softmax temperature.")
    top_k: int = _f(0, "generate (sample): keep the k most likely words (0: all).")
    top_p: float = _f(1.0, "generate (sample): nucleus mass in (0, 1] (1: no filter).")
    sample_seed: int = _f(0, "generate (sample): seed; the same seed gives the same text.")
    allow_unk: bool = _f(False, "generate: let the model produce <unk>.")
    allow_eos: bool = _f(True, "generate: let the model end lines (<eos>, kept as the word "
                               "<eos> so that each continuation stays on one line).")
    strict: bool = _f(False, "predict/generate: refuse words outside the vocabulary instead of "
                             "mapping them to <unk>.")



def define_flags(fv=flags.FLAGS):
    """Defines one absl flag per `LMConfig` and `InferenceConfig` field (but the run-level
    ones, `tfawd.core.flags.define_run_flags`), with validators."""
    define_fields(dataclasses.fields(LMConfig), fv)
    define_fields(dataclasses.fields(InferenceConfig), fv)
    for name in POSITIVE:
        flags.register_validator(name, lambda v: v > 0, f"--{name} must be positive",
                                 flag_values=fv)
    for name in NON_NEGATIVE:
        flags.register_validator(name, lambda v: v >= 0, f"--{name} must be >= 0", flag_values=fv)
    for name in PROBABILITIES:
        flags.register_validator(name, lambda v: 0 <= v < 1, f"--{name} must be in [0, 1)",
                                 flag_values=fv)
    for name in FLOAT_LISTS:
        flags.register_validator(name, _valid_float_list,
                                 f"--{name} must be comma-separated non-negative numbers",
                                 flag_values=fv)
    flags.register_validator("cache_lambda", lambda v: 0 <= v <= 1,
                             "--cache_lambda must be in [0, 1]", flag_values=fv)
    for name, check, text in (("num_tokens", lambda v: v > 0, "must be positive"),
                              ("temperature", lambda v: v > 0, "must be positive"),
                              ("top_k", lambda v: v >= 0, "must be >= 0 (0: no limit)"),
                              ("top_p", lambda v: 0 < v <= 1, "must be in (0, 1]")):
        flags.register_validator(name, check, f"--{name} {text}", flag_values=fv)
    flags.register_validator("lr_decay", lambda v: v >= 1, "--lr_decay must be >= 1",
                             flag_values=fv)
    flags.register_validator("adaptive_cutoffs", _valid_cutoffs,
                             "--adaptive_cutoffs must be auto or increasing positive integers, "
                             "e.g. 2000,10000", flag_values=fv)
    flags.register_validator("adaptive_div", lambda v: v >= 1, "--adaptive_div must be >= 1",
                             flag_values=fv)
    flags.register_multi_flags_validator(
        ["average_last_min", "optimizer", "time_budget_min"],
        lambda d: not d["average_last_min"] or (d["optimizer"] == "ntasgd"
                                                and d["average_last_min"] < d["time_budget_min"]),
        "--average_last_min needs --optimizer=ntasgd and a longer --time_budget_min",
        flag_values=fv)
    flags.register_multi_flags_validator(
        ["average_after_epochs", "optimizer"],
        lambda d: not d["average_after_epochs"] or d["optimizer"] == "ntasgd",
        "--average_after_epochs needs --optimizer=ntasgd", flag_values=fv)
    flags.register_multi_flags_validator(
        ["tie_weights", "nhid", "emsize"],
        lambda d: not d["tie_weights"] or d["nhid"] == d["emsize"],
        "--tie_weights needs --nhid equal to --emsize", flag_values=fv)


def inference_from_flags(fv=flags.FLAGS) -> InferenceConfig:
    return config_from_flags(InferenceConfig, fv)


def from_flags(fv=flags.FLAGS) -> LMConfig:
    """The run's config; `--precision=auto` becomes the precision this machine runs
    (`runtime.resolve_precision`), so everything downstream sees a concrete dtype policy."""
    cfg = config_from_flags(LMConfig, fv)
    if cfg.data_dir is None:
        cfg.data_dir = default_data_dir()
    cfg.precision_given = cfg.precision
    cfg.precision = runtime.resolve_precision(cfg.precision)
    return cfg
