"""SavedModel export for TF Serving (issue 7): contract tests.

Tiny models are exported in-process; each export is then loaded in ONE fresh subprocess where
keras and the project cannot be imported (blocked), which calls every signature with good and
bad requests and lists the graph's ops; `saved_model_cli show/run` (TF Serving's TF1 loader
path) runs in subprocesses.
Expected values are computed here with the in-process model.
"""
import io
import json
import os
import subprocess
import sys
import wave

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipelines import speech_features
from pipelines.speech_features import CharVocab
from pipelines.vocab import EOS, UNK, Vocabulary
from tfawd.core.serving import next_version, write_models_config
from tfawd.lm import inference
from tfawd.lm.export import MAX_WORDS, export_language_model
from tfawd.lm.models import AwdLstmModel
from tfawd.speech import las
from tfawd.speech.export import export_speech_model
from tfawd.speech.las import encoder_frames

CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
RATE, MAX_DECODE = 8000, 10
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}

# Shared by both fresh processes: load, call, record outcomes, list ops, check imports.
PRELUDE = r'''
import json, sys

# Keras and the project cannot be imported here: the SavedModel must not need them (TF's own
# __init__ tries to import keras and carries on without it).
for blocked in ("keras", "tf_keras", "tfawd", "pipelines"):
    sys.modules[blocked] = None
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry

path, params = sys.argv[1], json.loads(sys.argv[2])
loaded = tf.saved_model.load(path)
results = {"signatures": sorted(loaded.signatures)}

def plain(v):
    v = v.numpy()
    if v.dtype == object:
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(v).tolist()
    return v.tolist()

def call(name, signature, **inputs):
    try:
        out = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        results[name] = {k: plain(v) for k, v in out.items()}
    except tf.errors.InvalidArgumentError as e:
        results[name] = {"invalid_argument": e.message}
'''
EPILOGUE = r'''
sm = saved_model_pb2.SavedModel()
with open(path + "/saved_model.pb", "rb") as f:
    sm.ParseFromString(f.read())
ops = set()
for graph in sm.meta_graphs:
    ops.update(n.op for n in graph.graph_def.node)
    for fn in graph.graph_def.library.function:
        ops.update(n.op for n in fn.node_def)
results["ops"] = sorted(ops)
results["unregistered_ops"] = sorted(op for op in ops if op_def_registry.get(op) is None)
results["imported"] = sorted(m for m, module in sys.modules.items() if module is not None
                             and m.split(".")[0] in ("tfawd", "keras", "pipelines", "tf_keras"))
print(json.dumps(results))
'''

LM_REQUESTS = r'''
V = params["vocab_size"]
texts = params["texts"]
long_line = " ".join(f"w{i % 15}" for i in range(20000))
call("good", "next_words", text=texts, k=3)
call("default", "serving_default", text=texts[:1], k=3)
call("score", "score", text=texts)
for name, text in (("empty", ""), ("whitespace", " \t  "), ("non_utf8", b"\xff\xfe\xfa w3"),
                   ("unknown", "qqq zzz"), ("unknown_w3", "qqq w3"),
                   ("literal_unk", "<unk> <unk>"), ("long", long_line),
                   ("long_tail", " ".join(long_line.split()[-params["max_words"]:]))):
    call(name, "next_words", text=[text], k=2)
    call("score_" + name, "score", text=[text])
call("k0", "next_words", text=["w1"], k=0)
call("k_vocab", "next_words", text=["w1"], k=V)
call("k_huge", "next_words", text=["w1"], k=V + 100)
gen = dict(prompt=["w1 w2", ""], num_tokens=6, temperature=0.8, top_k=5, top_p=0.9,
           seed=np.int64(7))
call("sample", "generate", **gen)
call("sample_again", "generate", **gen)
call("greedy", "generate", **{**gen, "temperature": 0.0})
for name, change in (("negative_tokens", {"num_tokens": -3}), ("zero_tokens", {"num_tokens": 0}),
                     ("top_p_zero", {"top_p": 0.0}), ("top_p_big", {"top_p": 1.5}),
                     ("top_p_negative", {"top_p": -0.5}), ("temperature_negative",
                     {"temperature": -1.0}), ("top_k_big", {"top_k": V + 1}),
                     ("top_k_negative", {"top_k": -1})):
    call(name, "generate", **{**gen, **change})
call("generate_empty", "generate", **{**gen, "prompt": ["", "   "]})
'''

SPEECH_REQUESTS = r'''
wavs = [bytes.fromhex(h) for h in params["wavs"]]
feats = np.load(params["features"])
call("wav", "transcribe_wav", wav=wavs)
call("default", "serving_default", wav=wavs)
call("features", "transcribe_features", features=feats,
     lengths=np.array(params["frames"], np.int32))
for name, wav in (("not_wav", b"hello, this is not audio at all"), ("empty_bytes", b""),
                  ("riff_only", b"RIFF"), ("wrong_rate", bytes.fromhex(params["wrong_rate"])),
                  ("zero_length", bytes.fromhex(params["zero_length"]))):
    call(name, "transcribe_wav", wav=[wav])
call("features_39", "transcribe_features", features=np.zeros([1, 5, 39], np.float32),
     lengths=np.array([5], np.int32))
call("features_zero_length", "transcribe_features", features=np.zeros([1, 5, 40], np.float32),
     lengths=np.array([0], np.int32))
call("features_too_long", "transcribe_features", features=np.zeros([1, 5, 40], np.float32),
     lengths=np.array([9], np.int32))
'''


def fresh(requests, path, params):
    """Runs PRELUDE + requests + EPILOGUE in a new interpreter; its JSON results."""
    out = subprocess.run([sys.executable, "-c", PRELUDE + requests + EPILOGUE, path,
                          json.dumps(params)], capture_output=True, text=True, timeout=300,
                         env=ENV, cwd=os.path.dirname(path))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def cli(*args):
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300, env=ENV)


def check_contract(results, signatures):
    assert set(signatures) <= set(results["signatures"])
    assert results["imported"] == []  # neither tfawd nor keras was loaded
    assert results["unregistered_ops"] == []
    assert not {"PyFunc", "EagerPyFunc", "PyFuncStateless"} & set(results["ops"])


def invalid(result, message):
    assert "invalid_argument" in result, result
    assert message in result["invalid_argument"]


def xla_compiled_functions(path):
    """Names of the functions a SavedModel would run through XLA (TF Serving refuses them
    unless started with --xla_cpu_compilation_enabled)."""
    from tensorflow.core.protobuf import saved_model_pb2
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    functions = proto.meta_graphs[0].graph_def.library.function
    return [f.signature.name for f in functions if f.attr["_XlaMustCompile"].b] + [
        n.name for f in functions for n in f.node_def if n.attr["_XlaMustCompile"].b]


# -- language model -------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["full", "adaptive"])
def lm(request, tmp_path_factory):
    """A tiny AWD-LSTM with the full softmax, or the adaptive one (clients see no difference)."""
    keras.utils.set_random_seed(0)
    vocab = Vocabulary([f"w{i}" for i in range(17)] + ["café"])  # non-ASCII words too
    adaptive = dict(softmax="adaptive", cutoffs=[6, 12], div=2) if request.param == "adaptive" \
        else {}
    model = AwdLstmModel(len(vocab), emsize=8, nhid=12, nlayers=2, **adaptive)
    model(tf.zeros([1, 1], tf.int32), model.initial_state(1))
    rng = np.random.default_rng(0)
    if adaptive:  # <unk> (the last id, in the last cluster) would win if it were not masked
        for b in model.softmax.biases:
            b.assign(rng.normal(size=b.shape).astype(np.float32))
        model.softmax.biases[0][-1].assign(6.0)
        model.softmax.biases[-1][vocab.unk_id - 12].assign(6.0)
    else:
        bias = rng.normal(size=len(vocab)).astype(np.float32)
        bias[vocab.unk_id] = 6.0  # <unk> would win everything if it were not masked
        model.decoder_bias.assign(bias)
    base = str(tmp_path_factory.mktemp("exports"))
    paths = [export_language_model(model, vocab, base, "lm") for _ in range(2)]
    return model, vocab, base, paths


def test_language_model_export_contract(lm):
    model, vocab, base, paths = lm
    assert [os.path.basename(p) for p in paths] == ["1", "2"]
    assert xla_compiled_functions(paths[1]) == []  # standard kernels only (tfawd/nn/fusion.py)
    assert next_version(base, "lm") == 3
    texts = ["w1 w2 w3", "w4 café", "w5 qqq w6 w7 w8", EOS]
    cli_run = subprocess.Popen(  # saved_model_cli meanwhile, as TF Serving loads the model
        [CLI, "run", "--dir", paths[1], "--tag_set", "serve", "--signature_def", "next_words",
         "--input_exprs", 'text=["w1 w2", ""];k=3'], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=ENV)
    r = fresh(LM_REQUESTS, paths[1], {"vocab_size": len(vocab), "texts": texts,
                                      "max_words": MAX_WORDS})
    check_contract(r, ["serving_default", "next_words", "score", "generate"])

    # next-word probabilities equal the in-process model's, <unk> never proposed
    rows = [vocab.encode([EOS] + t.split()) for t in texts]
    probs = tf.nn.softmax(inference.next_word_scores(model, rows)).numpy()
    allowed = np.where(np.arange(len(vocab)) == vocab.unk_id, -1, probs)
    np.testing.assert_array_equal(r["good"]["ids"], np.argsort(-allowed, axis=1)[:, :3])
    np.testing.assert_allclose(r["good"]["probabilities"],
                               np.take_along_axis(probs, np.array(r["good"]["ids"]), 1), atol=1e-5)
    assert r["good"]["words"][0] == vocab.decode(r["good"]["ids"][0])
    assert r["default"]["ids"] == r["good"]["ids"][:1]

    # score: every word and the closing <eos>, as training scores a line
    ids = vocab.encode([EOS] + texts[0].split() + [EOS])
    logits, _ = model(tf.constant(ids[None, :-1]), model.initial_state(1))
    logp = tf.nn.log_softmax(logits[0]).numpy()[np.arange(len(ids) - 1), ids[1:]]
    np.testing.assert_allclose(r["score"]["log_probs"][0][:4], logp, atol=1e-5)
    assert r["score"]["tokens"][0][:4] == ["w1", "w2", "w3", EOS]
    assert r["score"]["lengths"] == [4, 3, 6, 2]
    assert r["score"]["tokens"][1][:2] == ["w4", "café"]
    np.testing.assert_allclose(r["score"]["perplexity"][0], np.exp(-logp.mean()), rtol=1e-5)
    assert r["score"]["num_unknown"] == [0, 0, 1, 0]

    # defined results for odd lines: an empty line is the first word's distribution
    assert r["empty"] == r["whitespace"]
    first = tf.nn.softmax(inference.next_word_scores(model, [[vocab.index[EOS]]]))[0].numpy()
    np.testing.assert_allclose(r["empty"]["probabilities"][0], np.sort(
        np.where(np.arange(len(vocab)) == vocab.unk_id, -1, first))[::-1][:2], atol=1e-5)
    assert r["score_empty"]["tokens"] == [[EOS]] and r["score_empty"]["lengths"] == [1]
    assert r["unknown"] == r["literal_unk"]  # unknown words read as <unk>
    assert r["non_utf8"] == r["unknown_w3"]  # invalid bytes: an unknown word
    assert r["score_unknown"]["num_unknown"] == [2] and r["score_literal_unk"]["num_unknown"] == [0]
    assert r["score_non_utf8"]["num_unknown"] == [1]
    assert r["long"] == r["long_tail"]  # cut to its last MAX_WORDS words
    assert r["score_long"]["lengths"] == [MAX_WORDS + 1]

    # bad parameters: InvalidArgument naming them
    invalid(r["k0"], "k must be >= 1")
    invalid(r["k_vocab"], f"k must be at most {len(vocab) - 1}")
    invalid(r["k_huge"], f"k must be at most {len(vocab) - 1}")
    invalid(r["negative_tokens"], "num_tokens must be >= 1")
    invalid(r["zero_tokens"], "num_tokens must be >= 1")
    for name in ("top_p_zero", "top_p_big", "top_p_negative"):
        invalid(r[name], "top_p must be in (0, 1]")
    invalid(r["temperature_negative"], "temperature must be >= 0")
    invalid(r["top_k_big"], "top_k must be at most")
    invalid(r["top_k_negative"], "top_k must be >= 0")

    # generation: the in-graph loop equals inference.generate, seeded, never <unk>
    prompts = [vocab.encode([EOS, "w1", "w2"]), vocab.encode([EOS])]
    want, _ = inference.generate(model, prompts, 6, "sample", temperature=0.8, top_k=5,
                                 top_p=0.9, seed=7, banned_ids=[vocab.unk_id])
    assert r["sample"]["tokens"] == [vocab.decode(w) for w in want]
    assert r["sample"] == r["sample_again"]
    assert r["sample"]["text"][0] == " ".join(r["sample"]["tokens"][0])
    greedy, _ = inference.generate(model, prompts, 6, "greedy", banned_ids=[vocab.unk_id])
    assert r["greedy"]["tokens"] == [vocab.decode(w) for w in greedy]
    assert len(r["generate_empty"]["tokens"][1]) == 6
    for out in (r["sample"], r["greedy"], r["generate_empty"]):
        assert UNK not in sum(out["tokens"], [])

    shown = cli("show", "--all", "--dir", paths[1])
    assert shown.returncode == 0, shown.stderr[-2000:]
    for name in ("next_words", "score", "generate", "serving_default", "num_tokens", "top_p"):
        assert name in shown.stdout
    stdout, stderr = cli_run.communicate(timeout=300)
    assert cli_run.returncode == 0, stderr[-2000:]
    assert "Result for output key probabilities" in stdout and "b'w" in stdout


# -- speech ---------------------------------------------------------------------------------
def wav_bytes(samples, rate=RATE):
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.asarray(samples) * 32767).astype(np.int16).tobytes())
    return buf.getvalue()


def test_speech_export_contract(lm, tmp_path):
    keras.utils.set_random_seed(1)
    vocab = CharVocab()
    # the serving signatures decode as the model is configured: a window of [peak, peak + 1]
    # encoder frames, at most ceil(0.2 x frames) steps (3 for the 14-frame wav)
    model = las.ListenAttendSpell(len(vocab), listener_units=16, speller_units=24,
                                  attention_dim=12, embed_dim=8, frame_stack=3, pyramid_layers=1,
                                  attention_window=1, attention_window_back=0,
                                  max_chars_per_frame=0.2)
    model.teacher_forced(tf.zeros([1, 3, 40]), tf.constant([3]), tf.constant([[2]]))
    base = lm[2]
    path = export_speech_model(model, vocab, RATE, MAX_DECODE, base, "las")
    assert os.path.basename(path) == "1"
    assert xla_compiled_functions(path) == []
    config = open(write_models_config(base)).read()
    assert "name: 'las'" in config and "base_path: '/models/lm'" in config
    assert config.startswith("model_config_list {") and config.count("config {") == 2

    rng = np.random.default_rng(0)
    audio = [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in (3000, 1100)]
    wavs = [wav_bytes(a) for a in audio]
    # expected: the wav as training reads it (decode_wav), featurised, decoded in-process
    decoded = [tf.audio.decode_wav(w, desired_channels=1)[0][:, 0] for w in wavs]
    mels = [speech_features.log_mel(a, RATE).numpy() for a in decoded]
    frames = [len(m) for m in mels]
    padded = np.zeros([2, max(frames), 40], np.float32)
    normed = np.zeros_like(padded)
    for i, m in enumerate(mels):
        padded[i, :len(m)] = m
        normed[i, :len(m)] = speech_features.normalise(m)
    tokens, scores, attention = model.greedy(tf.constant(normed), tf.constant(frames),
                                             MAX_DECODE)
    np.save(tmp_path / "features.npy", padded)
    np.save(tmp_path / "lengths.npy", np.array(frames, np.int32))
    cli_run = subprocess.Popen(
        [CLI, "run", "--dir", path, "--tag_set", "serve", "--signature_def",
         "transcribe_features", "--inputs",
         f"features={tmp_path / 'features.npy'};lengths={tmp_path / 'lengths.npy'}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    r = fresh(SPEECH_REQUESTS, path, {
        "wavs": [w.hex() for w in wavs], "features": str(tmp_path / "features.npy"),
        "frames": frames, "wrong_rate": wav_bytes(audio[0], 16000).hex(),
        "zero_length": wav_bytes([]).hex()})
    check_contract(r, ["serving_default", "transcribe_wav", "transcribe_features"])

    assert r["wav"]["transcripts"] == [vocab.decode(t) for t in tokens.numpy()]
    np.testing.assert_allclose(r["wav"]["scores"], scores.numpy(), atol=1e-4)
    assert np.array(r["wav"]["attention"]).shape[:2] == (2, MAX_DECODE)
    np.testing.assert_allclose(r["wav"]["attention"], attention.numpy(), atol=1e-5)
    assert (np.count_nonzero(r["wav"]["attention"], axis=-1) <= 2).all()  # the window
    assert frames[1] == 14 and len(r["wav"]["transcripts"][1]) <= 2  # the cap
    assert r["wav"]["frames"] == encoder_frames(np.array(frames), 3, 1).tolist()
    assert r["features"]["transcripts"] == r["wav"]["transcripts"]
    np.testing.assert_allclose(r["features"]["scores"], r["wav"]["scores"], atol=1e-4)
    assert r["default"]["transcripts"] == r["wav"]["transcripts"]

    for name in ("not_wav", "empty_bytes", "riff_only"):
        invalid(r[name], "not a WAV file")
    invalid(r["wrong_rate"], f"sample rate is not {RATE} Hz")
    invalid(r["zero_length"], "zero-length audio")
    invalid(r["features_39"], "40 log-mel bands")
    invalid(r["features_zero_length"], "lengths must be >= 1")
    invalid(r["features_too_long"], "lengths must be at most")

    shown = cli("show", "--all", "--dir", path)
    assert shown.returncode == 0 and "transcribe_wav" in shown.stdout, shown.stderr[-2000:]
    stdout, stderr = cli_run.communicate(timeout=300)
    assert cli_run.returncode == 0, stderr[-2000:]
    assert "Result for output key transcripts" in stdout


def test_export_flags_reach_both_configs():
    from absl import flags

    from tfawd import families
    from tfawd.lm import config
    from tfawd.speech import config as speech_config
    fv = flags.FlagValues()
    families.define_flags(fv)
    fv([sys.argv[0], "--export_dir=/tmp/exports", "--export_name=digits"])
    assert config.from_flags(fv).export_dir == "/tmp/exports"
    assert speech_config.from_flags(fv).export_name == "digits"
    assert config.LMConfig().export_dir == speech_config.SpeechConfig().export_dir


def test_a_bf16_model_is_exported_in_float32(tmp_path):
    """Trained in mixed_bfloat16 (--precision=auto on a CPU with bf16 units), the export still
    computes in float32: its server may lack bf16 units."""
    from tfawd.lm.models import copy_weights, float32_twin
    keras.utils.set_random_seed(1)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = AwdLstmModel(20, emsize=8, nhid=12, nlayers=2)
        model(tf.zeros([1, 1], tf.int32), model.initial_state(1))
    finally:
        keras.config.set_dtype_policy(previous)
    vocab = Vocabulary([f"w{i}" for i in range(18)])
    loaded = tf.saved_model.load(export_language_model(model, vocab, str(tmp_path), "lm"))
    got = loaded.signatures["next_words"](text=tf.constant(["w1 w2"]), k=tf.constant(3))
    twin = float32_twin(model)
    copy_weights(model, twin)
    probs = tf.nn.softmax(inference.next_word_scores(twin, [vocab.encode([EOS, "w1", "w2"])]))
    np.testing.assert_allclose(got["probabilities"][0],
                               tf.gather(probs[0], got["ids"][0]).numpy(), atol=1e-6)


def test_the_python_api_answers_as_the_serving_signatures(lm):
    """`tfawd.lm.load(...)`'s object (here built on the same weights) and the SavedModel are
    two implementations of one contract: the same tokens, log-probabilities, perplexities
    and next words."""
    from tfawd.lm.api import LanguageModel
    model, vocab, _, paths = lm
    api, served = LanguageModel(model, vocab), tf.saved_model.load(paths[-1]).signatures
    lines = ["w1 w2 w3", "café w4 nonsense", ""]
    out = served["score"](text=tf.constant(lines))
    for i, r in enumerate(api.score(lines)):
        n = int(out["lengths"][i])
        assert r["tokens"] == [t.decode() for t in out["tokens"][i, :n].numpy()]
        np.testing.assert_allclose(r["log_probs"], out["log_probs"][i, :n], rtol=1e-4, atol=1e-5)
        assert r["perplexity"] == pytest.approx(float(out["perplexity"][i]), rel=1e-4)
    out = served["next_words"](text=tf.constant(lines), k=tf.constant(4))
    for i, row in enumerate(api.next_words(lines, k=4)):
        assert [w for w, _ in row] == [w.decode() for w in out["words"][i].numpy()]
        np.testing.assert_allclose([p for _, p in row], out["probabilities"][i], rtol=1e-4)
