"""Word-level language models: the 2-layer LSTM baseline and AWD-LSTM (Merity et al. 2017).

`tfawd.lm.load(model_dir)` gives a trained run's model for Python callers (`tfawd.lm.api`).
"""


def load(model_dir: str, **kwargs):
    """A trained language model with `score`, `next_words` and `generate` (`api.load`)."""
    from tfawd.lm.api import load as _load  # TensorFlow is imported on first use only
    return _load(model_dir, **kwargs)
