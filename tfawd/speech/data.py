"""The recogniser's data: each --dataset as source splits of (audio, transcript) examples,
and those featurised (log-mels, character labels) and cached."""
import os

import tensorflow as tf

from pipelines import speech_features, speech_sources, spoken_digits
from tfawd.core import files


def sources(cfg) -> tuple:
    """(split -> source dataset, sample rate) for --dataset."""
    if cfg.dataset == "spoken_digits":
        kw = dict(seed=cfg.seed, max_digits=cfg.max_digits, heldout_speaker=cfg.heldout_speaker)
        splits = {"train": cfg.train_utterances, "valid": cfg.eval_utterances,
                  "test": cfg.eval_utterances}
        if cfg.heldout_speaker:
            splits["heldout"] = cfg.eval_utterances
        return ({s: spoken_digits.dataset(cfg.data_dir, s, n, **kw) for s, n in splits.items()},
                spoken_digits.SAMPLE_RATE)
    if cfg.dataset == "espeak":
        from pipelines import espeak_synth  # needs espeakng-loader
        out = cfg.espeak_dir or os.path.join(os.path.dirname(files.absolute(cfg.model_dir)),
                                             "espeak_corpus")
        info = espeak_synth.build_corpus(
            cfg.data_dir, out, sizes={"train": cfg.train_utterances, "valid": cfg.eval_utterances,
                                      "test": cfg.eval_utterances}, seed=cfg.seed)
        return ({s: espeak_synth.load_split(out, s) for s in ("train", "valid", "test")},
                int(info["sample_rate"]))
    if cfg.dataset == "manifest":
        paths = cfg.manifest.split(",")
        if len(paths) != 3:
            raise ValueError("--manifest needs train,valid,test TSV files (comma-separated)")
        rate = int(tf.audio.decode_wav(tf.io.read_file(
            speech_sources.read_manifest(paths[0])[0][0]))[1])
        return ({s: speech_sources.manifest_dataset(p)
                 for s, p in zip(("train", "valid", "test"), paths)}, rate)
    if cfg.features != "logmel" and cfg.dataset != "an4":
        raise ValueError(f"--features={cfg.features} exists for --dataset=an4 only: use "
                         f"--features=logmel")
    if cfg.dataset == "an4":  # precomputed features (the cepstra or log-mels from them), no audio
        from pipelines import an4
        # the validation speakers do not move with --seed: every run selects on the same ones
        return ({s: an4.dataset(cfg.data_dir, s, features=cfg.features, seed=0)
                 for s in an4.SPLITS}, 0)
    if cfg.dataset == "npy":
        return ({"train": speech_sources.npy_dataset(cfg.npy_prefix, "train"),
                 "valid": speech_sources.npy_dataset(cfg.npy_prefix, "dev")}, 0)
    raise ValueError(f"--dataset={cfg.dataset} is not speech data")


def feature_dim(cfg) -> int:
    """Bands per frame of --features: 13 for AN4's cepstra, else 40 log-mels."""
    if cfg.features == "cepstra":
        from pipelines import an4
        return an4.N_CEPSTRA
    return speech_features.N_MELS


def band_edges(cfg, sample_rate: int):
    """(lowest, highest) Hz of the mel filters behind --dataset's features (for VTLP), or
    None when unknown (seed 003's `.npy` features) or not bands (AN4's cepstra)."""
    if cfg.features == "cepstra":
        return None
    if cfg.dataset == "an4":
        from pipelines import an4
        return an4.BAND_EDGES_HZ
    if cfg.dataset == "npy":
        return None
    return speech_features.band_edges(sample_rate)


def featurized(cfg, vocab, stats=None) -> tuple:
    """(split -> cached dataset of featurized examples, sample rate, stats). --feature_norm:
    `utterance` normalises each utterance over its own frames (stats None); `global` by the
    mean and std of the training split's frames (global CMVN): `stats` (mean, std) when given
    (a trained model's), else measured on the train split here."""
    srcs, rate = sources(cfg)
    if cfg.feature_norm == "global" and stats is None:
        if "train" not in srcs:
            raise ValueError("--feature_norm=global needs the training split's statistics")
        raw = speech_features.featurize(rate, vocab, raw=True)
        stats = speech_features.feature_stats(srcs["train"].map(
            raw, num_parallel_calls=tf.data.AUTOTUNE))
    fn = speech_features.featurize(rate, vocab, stats if cfg.feature_norm == "global" else None)
    return ({s: d.map(fn, num_parallel_calls=tf.data.AUTOTUNE).cache()
             for s, d in srcs.items()}, rate, stats)
