"""TF Serving warm-up records (issue 28): every export carries
`assets.extra/tf_serving_warmup_requests`, PredictionLog records that read back as requests of
its own signatures, and each of them succeeds on the loaded SavedModel (a failing warm-up
request would stop TF Serving from loading the version)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from pipelines.speech_features import CharVocab
from pipelines.vocab import Vocabulary
from tfawd.core import warmup
from tfawd.lm.export import export_language_model
from tfawd.lm.models import AwdLstmModel
from tfawd.speech import las
from tfawd.speech.export import export_speech_model


def replay(path, name):
    """Each warm-up request called on the loaded export; the signatures it covers."""
    loaded = tf.saved_model.load(path)
    records = warmup.read_warmup(path)
    assert records and all(model == name for model, _, _ in records)
    for _, signature, inputs in records:
        outputs = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        assert outputs
    return sorted({signature for _, signature, _ in records})


def test_a_record_is_the_serving_apis_prediction_log_on_the_wire():
    """Field numbers of tensorflow_serving/apis: PredictionLog.predict_log = 6 (tag 0x32),
    PredictLog.request = 1 (0x0a), PredictRequest.model_spec = 1, inputs = 2 (0x12), ModelSpec
    name = 1, signature_name = 3 (0x1a); checked byte for byte against a hand encoding."""
    record = warmup.request_record("m", "sig", {})
    spec = b"\x0a\x01m" + b"\x1a\x03sig"
    request = b"\x0a" + bytes([len(spec)]) + spec
    log = b"\x0a" + bytes([len(request)]) + request
    assert record == b"\x32" + bytes([len(log)]) + log
    value = np.arange(3, dtype=np.int32)
    back = warmup.PredictionLog.FromString(warmup.request_record("m", "sig", {"x": value}))
    assert back.predict_log.request.model_spec.signature_name == "sig"
    assert "x" in back.predict_log.request.inputs


def test_the_language_model_export_warms_every_signature(tmp_path):
    keras.utils.set_random_seed(0)
    vocab = Vocabulary(["<unk>", "<eos>", "the", "cat", "sat", "on", "mat"])
    model = AwdLstmModel(len(vocab), emsize=8, nhid=8, nlayers=2)
    model(tf.zeros([1, 1], tf.int32), model.initial_state(1))
    path = export_language_model(model, vocab, str(tmp_path), "lm")
    assert replay(path, "lm") == ["generate", "next_words", "score"]


@pytest.mark.parametrize("sample_rate", [8000, 0])
def test_the_speech_export_warms_every_signature(tmp_path, sample_rate):
    """With a wav front end both signatures; a model trained on features only (AN4) the
    features signature alone."""
    keras.utils.set_random_seed(1)
    vocab = CharVocab()
    model = las.ListenAttendSpell(len(vocab), listener_units=8, speller_units=8,
                                  attention_dim=8, embed_dim=4, max_chars_per_frame=0.1)
    model.teacher_forced(tf.zeros([1, 3, 40]), tf.constant([3]), tf.constant([[2]]))
    path = export_speech_model(model, vocab, sample_rate, 20, str(tmp_path), "las")
    expected = ["transcribe_features", "transcribe_wav"] if sample_rate else [
        "transcribe_features"]
    assert replay(path, "las") == expected
