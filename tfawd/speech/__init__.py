"""Character-level speech recognition: Listen-Attend-Spell (Chan et al. 2016).

`tfawd.speech.load(model_dir)` gives a trained run's recogniser with `transcribe(wav_paths)`
(`tfawd.speech.inference`).
"""


def load(model_dir: str, **kwargs):
    """A trained recogniser with `transcribe` (`inference.load`)."""
    from tfawd.speech.inference import load as _load  # TensorFlow is imported on first use only
    return _load(model_dir, **kwargs)
