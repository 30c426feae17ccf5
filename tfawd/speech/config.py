"""Flags of the speech recogniser (`--model=las`), generated from one dataclass like
`tfawd.lm.config`: the run-level flags (`tfawd.core.flags.RunFlags`) with this family's
defaults, then the speech-only ones.
"""
import dataclasses

from absl import flags

from pipelines.corpus_files import default_data_dir
from tfawd.core.flags import RunFlags, config_from_flags, define_fields, family_default
from tfawd.core.flags import field as _f

DATASETS = ("spoken_digits", "espeak", "manifest", "npy", "an4")  # --dataset for --model=las


@dataclasses.dataclass
class SpeechConfig(RunFlags):
    """The recogniser's run (`RunFlags`, with its defaults) and its own flags."""
    model: str = family_default("model", "las")
    dataset: str = family_default("dataset", "spoken_digits")
    model_dir: str = family_default("model_dir", "runs/las_digits")
    batch_size: int = family_default("batch_size", 32)
    lr: float = family_default("lr", 1e-3)
    clip: float = family_default("clip", 5.0)
    seed: int = family_default("seed", 0)
    checkpoint_every: int = family_default("checkpoint_every", 0)
    # Speech data
    train_utterances: int = _f(4000, "spoken_digits/espeak: training utterances to build.")
    eval_utterances: int = _f(300, "spoken_digits: utterances per validation/test split.")
    max_digits: int = _f(7, "spoken_digits: most digits joined into one utterance.")
    heldout_speaker: str = _f("theo", "spoken_digits: speaker kept out of training, scored as "
                                      "the 'heldout' split ('' to train on all six).")
    espeak_dir: str = _f("", "espeak: folder of the synthesised corpus (built there once; "
                             "default <model_dir>/../espeak_corpus).")
    manifest: str = _f("", "manifest: a TSV of `wav path<TAB>transcript`; or a comma-separated "
                           "train,valid,test triple of such files.")
    npy_prefix: str = _f("", "npy: seed 003's format: <prefix>{train,dev}.npy (object arrays of "
                             "(T, 40) features) and <prefix>{train,dev}_transcripts.npy.")
    spec_augment: bool = _f(True, "SpecAugment masks on training features.")
    vtlp: float = _f(0.0, "VTLP (Jaitly & Hinton 2013): each training utterance's frequency "
                          "axis scaled by a factor drawn from [1 - this, 1 + this], as another "
                          "speaker's vocal tract would (0: off; the paper drew from 0.9-1.1).")
    features: str = _f("logmel", "Input features: logmel (40 log-mel bands: from the audio, or "
                                 "for AN4 from its cepstra by the inverse DCT) or cepstra (AN4 "
                                 "only: its 13 Sphinx cepstra as stored).",
                       choices=("logmel", "cepstra"))
    feature_norm: str = _f("utterance", "Feature normalisation: utterance (each utterance's "
                                        "bands to zero mean, unit variance over its own frames) "
                                        "or global (by the training split's per-band mean and "
                                        "std, saved with the model).",
                           choices=("utterance", "global"))
    # Model
    listener_units: int = _f(256, "LAS: BiLSTM units per direction.")
    frame_stack: int = _f(1, "LAS: consecutive frames the BiLSTM reads per step (1: every "
                             "10 ms frame; 3: a step per 30 ms, 3x fewer recurrent steps).")
    pyramid_layers: int = _f(0, "LAS: pyramidal BiLSTM layers after the first (each halves T).")
    speller_units: int = _f(256, "LAS: units of each of the two decoder LSTMCells.")
    attention_dim: int = _f(128, "LAS: key/value/query size of the attention.")
    attention: str = _f("dot", "LAS: the speller's attention: dot (the seed's dot product of "
                               "query and keys) or location (Chorowski et al. 2015 section "
                               "2.1: also convolutional features of the previous step's "
                               "weights, so it can prefer frames just after the last focus).",
                        choices=("dot", "location"))
    char_embed_dim: int = _f(64, "LAS: character embedding size.")
    attention_window: int = _f(0, "LAS: windowed attention (Chorowski et al. 2015, section 2.3):"
                                  " each decoder step attends only to encoder frames p - "
                                  "--attention_window_back .. p + this, p the previous step's "
                                  "attention peak (0 before the first step), in training and "
                                  "decoding. In encoder frames (10 ms x --frame_stack x "
                                  "2^--pyramid_layers). 0: off.")
    attention_window_back: int = _f(3, "LAS: frames behind the previous peak the window keeps "
                                       "(the letters of a word are read from its frames in "
                                       "slightly varying order; a repeated word lies further "
                                       "back).")
    # Training
    teacher_forcing: float = _f(1.0, "LAS: probability of feeding the true previous character "
                                     "at the start of training.")
    teacher_forcing_final: float = _f(0.9, "LAS: the same at the end of the schedule.")
    teacher_forcing_epochs: int = _f(10, "LAS: epochs over which the rate moves linearly "
                                         "from --teacher_forcing to --teacher_forcing_final.")
    lr_epoch_decay: float = _f(1.0, "Adam's learning rate is --lr * this ** epoch (1: constant); "
                                    "a decaying rate settles the late epochs' swings.")
    ema_decay: float = _f(0.0, "LAS: validate, keep as best and evaluate an exponential moving "
                               "average of the weights (Polyak & Juditsky 1992), this much of "
                               "it kept per step (Keras' use_ema); it evens out the swings of "
                               "single epochs' weights. 0: off.")
    ctc_weight: float = _f(0.0, "LAS: joint CTC-attention training (Watanabe et al. 2017): a CTC "
                                "head on the listener and the loss w * CTC + (1 - w) * "
                                "attention cross-entropy, both per character. 0: off.")
    label_smoothing: float = _f(0.1, "LAS: label smoothing of the character targets.")
    guided_attention: float = _f(0.0, "LAS: weight of the guided attention loss (Tachibana et "
                                      "al. 2017, section 4.1): the mean over (label n, encoder "
                                      "frame t) cells of A[n,t] (1 - exp(-(n/N - t/T)^2 / 2g^2)),"
                                      " about 0.6/T for uniform attention. 0: off.")
    guided_attention_width: float = _f(0.2, "LAS: g of --guided_attention (a fraction of the "
                                            "utterance).")
    ctc_decode_weight: float = _f(0.5, "LAS with a CTC head (--ctc_weight > 0): weight of the "
                                       "CTC prefix score in the joint beam search (Watanabe et "
                                       "al. 2017 section 3.3), scored as the 'joint' decoder "
                                       "beside greedy and beam; the CTC head alone is scored "
                                       "as 'ctc'. 0: no joint decoding. 0.5 was best of "
                                       "0.1-0.7 on AN4's validation split.")
    lm_weight: float = _f(0.0, "LAS: shallow fusion (Gulcehre et al. 2015): weight beta of a "
                               "character LM's log-probability in the joint CTC/attention beam "
                               "search, scored as the 'joint_lm' decoder beside 'joint' (needs "
                               "a CTC head, --ctc_decode_weight > 0, --beam_size > 1). The LM is "
                               "trained on the training transcripts at the first evaluation "
                               "that needs it and kept in --model_dir. 0: off.")
    lm_length_bonus: float = _f(0.0, "LAS: gamma, added to a fused hypothesis's score per "
                                     "character (<eos> counted): offsets the LM's cost of "
                                     "every character, which alone favours short transcripts.")
    char_lm_units: int = _f(256, "LAS: LSTM units of the fused character LM (--lm_weight).")
    max_decode_len: int = _f(120, "LAS: longest decoded transcript, in characters.")
    max_chars_per_frame: float = _f(0.0, "LAS: decoding also stops after ceil(input frames x "
                                         "this) characters incl. <eos> (a looping decoder "
                                         "cannot run to --max_decode_len on a short utterance)."
                                         " 0: off. Spoken digits and eSpeak reach at most "
                                         "about 0.27 per 10 ms frame.")


PROBABILITIES = ("teacher_forcing", "teacher_forcing_final", "label_smoothing")


def define_flags(fv=flags.FLAGS):
    """Defines the speech-only flags (the run-level ones: `tfawd.core.flags.define_run_flags`)."""
    define_fields(dataclasses.fields(SpeechConfig), fv)
    for name in ("train_utterances", "eval_utterances", "max_digits", "listener_units",
                 "speller_units", "attention_dim", "char_embed_dim", "max_decode_len",
                 "teacher_forcing_epochs", "frame_stack", "char_lm_units"):
        flags.register_validator(name, lambda v: v > 0, f"--{name} must be positive",
                                 flag_values=fv)
    for name in PROBABILITIES:
        flags.register_validator(name, lambda v: 0 <= v <= 1, f"--{name} must be in [0, 1]",
                                 flag_values=fv)
    flags.register_validator("pyramid_layers", lambda v: 0 <= v <= 3,
                             "--pyramid_layers must be 0-3", flag_values=fv)
    for name in ("attention_window", "attention_window_back", "guided_attention",
                 "max_chars_per_frame"):
        flags.register_validator(name, lambda v: v >= 0, f"--{name} must be >= 0",
                                 flag_values=fv)
    flags.register_validator("lr_epoch_decay", lambda v: 0 < v <= 1,
                             "--lr_epoch_decay must be in (0, 1]", flag_values=fv)
    flags.register_validator("ctc_decode_weight", lambda v: 0 <= v <= 1,
                             "--ctc_decode_weight must be in [0, 1]", flag_values=fv)
    flags.register_validator("lm_weight", lambda v: v >= 0, "--lm_weight must be >= 0",
                             flag_values=fv)
    flags.register_validator("ctc_weight", lambda v: 0 <= v < 1,
                             "--ctc_weight must be in [0, 1)", flag_values=fv)
    flags.register_validator("ema_decay", lambda v: 0 <= v < 1,
                             "--ema_decay must be in [0, 1)", flag_values=fv)
    flags.register_validator("guided_attention_width", lambda v: v > 0,
                             "--guided_attention_width must be positive", flag_values=fv)
    flags.register_multi_flags_validator(
        ["features", "dataset", "vtlp"], lambda v: v["features"] != "cepstra" or (
            v["dataset"] == "an4" and not v["vtlp"]),
        "--features=cepstra exists for --dataset=an4 only (its stored form; audio gives "
        "log-mels) and has no mel bands for --vtlp to warp: use --features=logmel",
        flag_values=fv)
    flags.register_validator("vtlp", lambda v: 0 <= v < 0.5,
                             "--vtlp must be in [0, 0.5) (the warp factor's spread; 0.1 is "
                             "the paper's)", flag_values=fv)


def from_flags(fv=flags.FLAGS) -> SpeechConfig:
    cfg = config_from_flags(SpeechConfig, fv)
    if cfg.data_dir is None:
        cfg.data_dir = default_data_dir()
    return cfg
