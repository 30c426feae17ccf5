"""The language-model family's registration (`tfawd.core.registry`): --model=lstm or
awd_lstm on the text corpora, its modes and its loader. Modules load when a mode runs."""
from pipelines.corpus_files import CORPORA, DataError
from tfawd.core import registry
from tfawd.core.run_guard import RunError
from tfawd.lm import config


def _train(cfg, fv, dist):
    from tfawd.lm import training
    return training.train(cfg, distribution=dist)


def _finetune(cfg, fv, dist):
    from tfawd.lm import training
    return training.finetune(cfg, distribution=dist)


def _mode(name, with_inference=False):
    def run(cfg, fv, dist):
        from tfawd.lm import modes
        fn = getattr(modes, name)
        return fn(cfg, config.inference_from_flags(fv)) if with_inference else fn(cfg)
    return run


def _export(cfg, fv, dist):
    from tfawd.lm import export
    return export.export_run(cfg)


def _load(model_dir, **options):
    from tfawd.lm import api
    return api.load(model_dir, **options)


FAMILY = registry.register(registry.Family(
    name="language model", models=("lstm", "awd_lstm"), datasets=tuple(CORPORA),
    config=config.LMConfig, define_flags=config.define_flags, from_flags=config.from_flags,
    modes={"train": _train, "finetune": _finetune, "evaluate": _mode("evaluate"),
           "tune_cache": _mode("tune_cache"), "tune_dynamic_eval": _mode("tune_dynamic_eval"),
           "predict": _mode("predict", True), "generate": _mode("generate", True),
           "export": _export},
    training_modes=("train", "finetune"), load=_load, errors=(DataError, RunError),
    mode_errors={m: (ValueError,) for m in ("predict", "generate", "export")}))
