"""The recogniser's data: each --dataset as source splits of (audio, transcript) examples,
and those featurised (log-mels, character labels) and cached."""
import os

import tensorflow as tf

from pipelines import speech_features, speech_sources, spoken_digits


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
        out = cfg.espeak_dir or os.path.join(os.path.dirname(os.path.abspath(cfg.model_dir)),
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
    if cfg.dataset == "an4":  # precomputed features (40 log-mels from the cepstra), no audio
        from pipelines import an4
        return ({s: an4.dataset(cfg.data_dir, s, features="logmel", seed=cfg.seed)
                 for s in an4.SPLITS}, 0)
    if cfg.dataset == "npy":
        return ({"train": speech_sources.npy_dataset(cfg.npy_prefix, "train"),
                 "valid": speech_sources.npy_dataset(cfg.npy_prefix, "dev")}, 0)
    raise ValueError(f"--dataset={cfg.dataset} is not speech data")


def featurized(cfg, vocab) -> tuple:
    """(split -> cached dataset of featurized examples, sample rate)."""
    srcs, rate = sources(cfg)
    fn = speech_features.featurize(rate, vocab)
    return {s: d.map(fn, num_parallel_calls=tf.data.AUTOTUNE).cache()
            for s, d in srcs.items()}, rate
