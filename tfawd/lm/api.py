"""A trained language model for Python callers: `tfawd.lm.load("runs/x")`.

  from tfawd import lm
  model = lm.load("runs/awd_lstm_wt2_cpu")
  model.next_words(["the meaning of"], k=5)   # [[("the", 0.21), ("life", 0.05), ...]]
  model.score(["the cat sat on the mat"])     # [{"tokens", "log_probs", "perplexity"}]
  model.generate(["the game"], num_tokens=20, method="sample", top_k=40)

Built from the run's model.json with its best weights (`inference.load_trained`): the model
only, no optimizer. Lines are read as the export's signatures read them: in the start-of-line
context of training (`<eos>` then the words), words split on whitespace, unknown words mapped
to `<unk>` (or refused with `strict=True`).
"""
import numpy as np
import tensorflow as tf

from pipelines.vocab import EOS, UNK
from tfawd.lm import inference
from tfawd.lm.config import LMConfig


class LanguageModel:
    def __init__(self, model, vocab, strict: bool = False):
        self.model, self.vocab, self.strict = model, vocab, strict

    def _line(self, text: str) -> np.ndarray:
        ids = inference.encode_prompt(self.vocab, text, self.strict)
        return np.concatenate([[self.vocab.index[EOS]], ids]).astype(np.int32)

    def next_words(self, contexts, k: int = 10) -> list:
        """The k most likely next words of each context (never `<unk>`), with probabilities."""
        logits = inference.next_word_scores(self.model, [self._line(c) for c in contexts])
        logp = tf.nn.log_softmax(tf.constant(logits, tf.float32)).numpy()
        logp[:, self.vocab.index[UNK]] = -np.inf
        top = np.argsort(-logp, axis=1)[:, :k]
        return [[(self.vocab.words[i], float(np.exp(row[i]))) for i in ids]
                for ids, row in zip(top, logp)]

    def score(self, lines) -> list:
        """Every word of each line and its closing `<eos>` scored: tokens, log-probabilities
        (natural log) and the line's perplexity."""
        out = []
        for text in lines:
            ids = np.concatenate([self._line(text), [self.vocab.index[EOS]]]).astype(np.int32)
            x = tf.constant(ids[None, :-1])
            logits, _ = self.model(x, self.model.initial_state(1), training=False)
            logp = tf.nn.log_softmax(tf.cast(logits[0], tf.float32)).numpy()
            chosen = logp[np.arange(len(ids) - 1), ids[1:]]
            out.append({"tokens": self.vocab.decode(ids[1:]), "log_probs": chosen.tolist(),
                        "perplexity": float(np.exp(-chosen.mean()))})
        return out

    def generate(self, prompts, num_tokens: int = 20, method: str = "greedy", **kwargs) -> list:
        """Continuations of text prompts (`inference.generate_text`: method greedy, sample
        with temperature / top_k / top_p / seed, or beam with beam_size)."""
        return inference.generate_text(self.model, self.vocab, prompts, num_tokens, method,
                                       strict=self.strict, **kwargs)


def load(model_dir: str, precision: str = "float32", strict: bool = False) -> LanguageModel:
    """The trained language model of `model_dir` (its architecture from model.json)."""
    cfg = LMConfig(model_dir=model_dir, precision=precision, explicit=())
    model, vocab = inference.load_trained(model_dir, cfg)
    return LanguageModel(model, vocab, strict)
