"""The evaluation modes of main.py, on the best weights of a trained `--model_dir` (the
averaged ones when NT-ASGD produced them):

- `evaluate`: validation (batch `eval_batch_size`) and test (batch `test_batch_size`)
  perplexity; with `--cache_window` also with the continuous cache pointer at
  `--cache_theta`/`--cache_lambda`; with `--dynamic_eval_lr` also with dynamic evaluation.
- `tune_cache`: grid search of the cache's theta and lambda on validation only, the chosen pair
  then applied to test.
- `tune_dynamic_eval`: grid search of dynamic evaluation's lr and lambda on (the start of)
  validation, the chosen pair then applied to validation and test; with `--cache_window`
  also the cache pointer on top of the adapting model (theta, lambda tuned on validation).

Each mode adds its section to `<model_dir>/eval_results.json` (`plain`, `cache`,
`dynamic_eval`, `dynamic_eval_cache`, each with the command that made it), leaving the others
in place, so the report sees every method's figures.
"""
import os
import sys
import typing

from pipelines.lm_corpus import Corpus, load_corpus
from tfawd.core import files, reporting, runtime
from tfawd.core.checkpoints import latest as latest_checkpoint
from tfawd.core.run_dir import RunDir
from tfawd.core.run_flags import FIX_FLAGS
from tfawd.core.run_guard import RunError
from tfawd.lm.config import float_list
from tfawd.lm.dynamic_eval import DynamicEvaluator, gradient_rms
from tfawd.lm.evaluation import Evaluator, split_metrics
from tfawd.lm.inference import load_trained
from tfawd.lm.pointer import cache_grid, evaluate_with_cache


class LoadedRun(typing.NamedTuple):
    """A trained run as evaluation needs it: the model (best weights), its corpus, the flags."""
    model: object
    corpus: Corpus
    cfg: object


def _load(cfg, corpus=None) -> LoadedRun:
    """The model of `cfg.model_dir` with its best weights (the latest if never validated),
    built from the run's own config (no optimizer, no training step), and its corpus read with
    the run's vocabulary (its dataset unless --dataset is given)."""
    if not latest_checkpoint(RunDir(cfg.model_dir).ckpt):
        raise RunError(f"no checkpoint in --model_dir={cfg.model_dir}; train one first "
                       f"(--mode=train) or point --model_dir at a trained run")
    model, vocab = load_trained(cfg.model_dir, cfg)
    if corpus is None:
        dataset = cfg.dataset
        if "dataset" not in (cfg.explicit or ()) and files.exists(RunDir(cfg.model_dir).flags):
            dataset = files.read_json(RunDir(cfg.model_dir).flags,
                                      fix=FIX_FLAGS).get("dataset", dataset)
        corpus = load_corpus(dataset, cfg.data_dir, vocab=vocab)
    elif vocab.words != corpus.vocab.words:
        raise RunError(f"{RunDir(cfg.model_dir).vocab} differs from the corpus vocabulary")
    return LoadedRun(model, corpus, cfg)


def _score(run: LoadedRun) -> dict:
    """Validation and test perplexity of the loaded weights (validation at
    --eval_batch_size, test at --test_batch_size, as training's final evaluation)."""
    weights = "best" if latest_checkpoint(RunDir(run.cfg.model_dir).best) else "last"
    return {"weights": weights, **split_metrics(Evaluator(run.model), run.corpus, run.cfg)}


def _record(cfg, section: str, payload: dict) -> str:
    path = RunDir(cfg.model_dir).eval_results
    results = {}
    if files.exists(path):
        results = files.read_json(path, fix="move it aside (earlier evaluation results are in "
                                  "it) and run the command again")
    results[section] = {**payload, "command": " ".join(sys.argv),
                        "machine": runtime.machine()}  # where this evaluation ran
    results["versions"] = reporting.versions()
    reporting.write_json(path, results)
    return path


def _tuned_on_valid(cache, thetas, lambdas) -> dict:
    """The cache pointer's (theta, lambda) picked from the grid on validation, then applied
    once to test: `cache(split, thetas, lambdas)` returns the best point of its grid."""
    valid = cache("valid", thetas, lambdas)
    return {"valid": valid, "test": cache("test", [valid["theta"]], [valid["lambda"]])}


def _cache(trainer, thetas, lambdas) -> dict:
    """The cache on the static model (valid at --eval_batch_size, test at --test_batch_size)."""
    cfg = trainer.cfg
    batch = {"valid": cfg.eval_batch_size, "test": cfg.test_batch_size}
    return _tuned_on_valid(
        lambda split, t, lam: evaluate_with_cache(trainer.model, trainer.corpus.ids[split],
                                                  batch[split], cfg.bptt, cfg.cache_window,
                                                  t, lam),
        thetas, lambdas)


def evaluate(cfg, corpus=None) -> dict:
    """`--mode=evaluate` (see module doc)."""
    trainer = _load(cfg, corpus)
    metrics = _score(trainer)
    _record(cfg, "plain", metrics)
    line = f"| valid ppl {metrics['val_ppl']:.2f} | test ppl {metrics['test_ppl']:.2f}"
    if cfg.cache_window:
        cache = _cache(trainer, [cfg.cache_theta], [cfg.cache_lambda])
        _record(cfg, "cache", cache)
        metrics["cache"] = cache
        line += f" | with cache: {cache['valid']['ppl']:.2f} / {cache['test']['ppl']:.2f}"
    if cfg.dynamic_eval_lr:
        dynamic = _dynamic(trainer, [cfg.dynamic_eval_lr], [cfg.dynamic_eval_lambda],
                           cache=([cfg.cache_theta], [cfg.cache_lambda]))
        metrics["dynamic_eval"] = dynamic
        line += (f" | dynamic eval: {dynamic['valid']['ppl']:.2f} / "
                 f"{dynamic['test']['ppl']:.2f}")
        if "cache" in dynamic:
            line += (f" | both: {dynamic['cache']['valid']['ppl']:.2f} / "
                     f"{dynamic['cache']['test']['ppl']:.2f}")
    print(line, flush=True)
    return metrics


def tune_cache(cfg, corpus=None) -> dict:
    """`--mode=tune_cache`: theta/lambda chosen on validation, then applied to test."""
    if not cfg.cache_window:
        raise RunError("--mode=tune_cache needs --cache_window > 0 (the paper uses 3785)")
    trainer = _load(cfg, corpus)
    out = _cache(trainer, float_list(cfg.cache_thetas), float_list(cfg.cache_lambdas))
    valid, test = out["valid"], out["test"]
    path = _record(cfg, "cache", out)
    print(f"| cache window {cfg.cache_window} theta {valid['theta']} lambda {valid['lambda']} "
          f"| valid ppl {valid['base_ppl']:.2f} -> {valid['ppl']:.2f} | test ppl "
          f"{test['base_ppl']:.2f} -> {test['ppl']:.2f} | {path}", flush=True)
    return out


def _dynamic(trainer, lrs, lambdas, tune_tokens=0, cache=None) -> dict:
    """Dynamic evaluation of valid and test at the best (lr, lambda) of the grid (tuned on the
    first `tune_tokens` of validation when the grid has several). With `cache` = (thetas,
    lambdas) and `--cache_window`, the cache pointer also runs on top of the adapting model:
    its (theta, lambda) tuned on validation, recorded as `dynamic_eval_cache`."""
    cfg = trainer.cfg
    rms = gradient_rms(trainer.model, trainer.corpus.ids["train"], bptt=cfg.dynamic_eval_bptt,
                       max_batches=cfg.dynamic_eval_grad_batches)
    evaluator = DynamicEvaluator(trainer.model, rms)
    valid_ids = trainer.corpus.ids["valid"]
    search = None
    if len(lrs) * len(lambdas) > 1:
        search = evaluator.tune(valid_ids[:tune_tokens or None], lrs, lambdas,
                                cfg.dynamic_eval_bptt)
        lrs, lambdas = [search["lr"]], [search["lambda"]]
    keep = bool(cache and cfg.cache_window)
    out = {split: evaluator.evaluate(trainer.corpus.ids[split], lrs[0], lambdas[0],
                                     cfg.dynamic_eval_bptt, keep_outputs=keep)
           for split in ("valid", "test")}
    if search:
        out["search"] = search
    outputs = {split: out[split].pop("outputs") for split in ("valid", "test") if keep}
    _record(cfg, "dynamic_eval", out)
    if keep:
        out["cache"] = _tuned_on_valid(
            lambda split, t, lam: cache_grid(*outputs[split], cfg.cache_window, t, lam), *cache)
        _record(cfg, "dynamic_eval_cache", out["cache"])
    return out


def tune_dynamic_eval(cfg, corpus=None) -> dict:
    """`--mode=tune_dynamic_eval`: lr/lambda chosen on validation, then applied to test."""
    trainer = _load(cfg, corpus)
    scale = cfg.dynamic_eval_bptt / 5  # the grids are given for 5-token segments
    out = _dynamic(trainer, [x * scale for x in float_list(cfg.dynamic_eval_lrs)],
                   [x * scale for x in float_list(cfg.dynamic_eval_lambdas)],
                   cfg.dynamic_eval_tune_tokens,
                   cache=(float_list(cfg.cache_thetas), float_list(cfg.cache_lambdas)))
    print(f"| dynamic eval lr {out['valid']['lr']:.3g} lambda {out['valid']['lambda']:.3g} | "
          f"valid ppl {out['valid']['ppl']:.2f} | test ppl {out['test']['ppl']:.2f}", flush=True)
    if "cache" in out:
        valid, test = out["cache"]["valid"], out["cache"]["test"]
        print(f"| + cache window {cfg.cache_window} theta {valid['theta']} lambda "
              f"{valid['lambda']} | valid ppl {valid['ppl']:.2f} | test ppl {test['ppl']:.2f}",
              flush=True)
    return out


# -- prediction and generation (seed 003's interface) --------------------------------------
def _inference_model(cfg):
    from tfawd.lm import inference
    return inference.load_trained(cfg.model_dir, cfg)


def _default_output(cfg, given: str, name: str) -> str:
    return given or os.path.join(cfg.model_dir, name)


def predict(cfg, inf) -> dict:
    """`--mode=predict`: raw next-word scores [B, V] of each context (`--contexts`) saved as
    .npy; with `--targets`, the mean NLL of the prediction."""
    import numpy as np

    from tfawd.lm import inference
    if not inf.contexts:
        raise RunError("--mode=predict needs --contexts (a .npy of ids or a text file)")
    model, vocab = _inference_model(cfg)
    contexts = inference.read_contexts(inf.contexts, vocab, inf.strict)
    scores = inference.next_word_scores(model, contexts)
    path = _default_output(cfg, inf.output, "predictions.npy")
    files.save_npy(path, scores)
    out = {"contexts": len(contexts), "scores": path, "shape": list(scores.shape)}
    if inf.targets:
        if inf.targets.endswith(".npy"):
            with files.open_file(inf.targets, "rb") as f:
                targets = np.load(f)
        else:
            with files.open_file(inf.targets) as f:
                words = [line.strip() for line in f if line.strip()]
            targets = np.array([inference.encode_prompt(vocab, w, inf.strict)[0] for w in words])
        if len(targets) != len(contexts):
            raise RunError(f"--targets has {len(targets)} entries for {len(contexts)} contexts")
        out["mean_nll"] = inference.prediction_nll(scores, targets)
    _record(cfg, "predict", out)
    print(f"| predict | {out['contexts']} contexts -> {path} {out['shape']}"
          + (f" | mean NLL {out['mean_nll']:.4f}" if "mean_nll" in out else ""), flush=True)
    return out


def generate(cfg, inf) -> list:
    """`--mode=generate`: a continuation of `--num_tokens` words for `--prompt` or each line
    of `--prompts_file`, one line per prompt in `--output`, with the mean NLL of each."""
    from pipelines.vocab import EOS, UNK
    from tfawd.lm import inference
    if bool(inf.prompt) == bool(inf.prompts_file):
        raise RunError("--mode=generate needs exactly one of --prompt and --prompts_file")
    prompts = [inf.prompt]
    if inf.prompts_file:
        with files.open_file(inf.prompts_file) as f:
            prompts = [line.rstrip("\n") for line in f]
    model, vocab = _inference_model(cfg)
    banned = [vocab.index[w] for w, allowed in ((UNK, inf.allow_unk), (EOS, inf.allow_eos))
              if not allowed]
    kwargs = {"banned_ids": banned}
    if inf.method == "sample":
        kwargs.update(temperature=inf.temperature, top_k=inf.top_k, top_p=inf.top_p,
                      seed=inf.sample_seed)
    results = inference.generate_text(model, vocab, prompts, inf.num_tokens, inf.method,
                                      beam_size=cfg.beam_size, strict=inf.strict,
                                      eos=f" {EOS} ", **kwargs)
    path = _default_output(cfg, inf.output, "generated.txt")
    files.write_text(path, "".join(r["continuation"].replace("\n", " ") + "\n"
                                   for r in results))
    mean = sum(r["mean_nll"] for r in results) / len(results)
    _record(cfg, "generate", {"prompts": len(results), "output": path, "mean_nll": mean,
                              "method": inf.method, "num_tokens": inf.num_tokens})
    for r in results:
        print(f"{r['prompt']} || {r['continuation']}  (NLL {r['mean_nll']:.3f})", flush=True)
    print(f"| generate | {len(results)} prompts -> {path} | mean NLL {mean:.4f}", flush=True)
    return results
