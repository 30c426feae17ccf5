"""The speech family's registration (`tfawd.core.registry`): --model=las on the speech data
sets, its modes and its loader. Modules load when a mode runs."""
from pipelines.corpus_files import DataError
from tfawd.core import registry
from tfawd.core.run_guard import RunError
from tfawd.speech import config


def _train(cfg, fv, dist):
    from tfawd.speech import training
    return training.train(cfg, distribution=dist)


def _evaluate(cfg, fv, dist):
    from tfawd.speech import evaluation
    return evaluation.evaluate(cfg)


def _export(cfg, fv, dist):
    from tfawd.speech import export
    return export.export_run(cfg)


def _load(model_dir, **options):
    from tfawd.speech import inference
    return inference.load(model_dir, **options)


FAMILY = registry.register(registry.Family(
    name="speech", models=("las",), datasets=config.DATASETS, config=config.SpeechConfig,
    define_flags=config.define_flags, from_flags=config.from_flags,
    modes={"train": _train, "evaluate": _evaluate, "export": _export},
    training_modes=("train",), load=_load, errors=(DataError, RunError, ValueError)))
