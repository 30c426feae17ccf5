"""Shallow fusion of the character LM (`tfawd/speech/char_lm.py`) measured on a trained
recogniser: the joint CTC/attention beam search with (lm_weight, length_bonus) from a grid,
each pair decoding the validation split, the pair with the lowest validation CER chosen (the
test speakers never choose), then the test split decoded without fusion and with the chosen
pair. One process: the model, the features and the LM are loaded once; the LM is the run
folder's (trained there first if it has none).

  python benchmarks/lm_fusion.py --config=configs/las_an4.cfg --model_dir=runs/las_an4 \\
      --weights=0.1,0.2,0.3,0.5 --bonuses=0,0.5,1 --out=F
"""
import itertools

import common  # first: sys.path, oneDNN and the allocator
from absl import flags

from tfawd import families

flags.DEFINE_list("weights", ["0.1", "0.2", "0.3", "0.5"], "lm_weight (beta) values tried.")
flags.DEFINE_list("bonuses", ["0", "0.5", "1"], "length_bonus (gamma) values tried.")
flags.DEFINE_string("out", None, "Also write the JSON here.")
families.define_flags(flags.FLAGS)  # the run-level and family flags, as main.py
FLAGS = flags.FLAGS


def main():
    from tfawd.speech import char_lm, config, joint_decoding
    from tfawd.speech.evaluation import load_for_evaluation, score_split
    model, cfg, vocab, data = load_for_evaluation(config.from_flags(FLAGS))
    if model.ctc_head is None or cfg.beam_size < 2 or not cfg.ctc_decode_weight:
        raise SystemExit("lm_fusion needs a run trained with --ctc_weight > 0, and "
                         "--beam_size > 1 and --ctc_decode_weight > 0")
    lm, lm_info = char_lm.for_run(cfg, vocab, data)

    def score(split, weight, bonus):
        decode = joint_decoding.make_joint_decoder(
            model, cfg.max_decode_len, cfg.beam_size, cfg.ctc_decode_weight,
            lm=lm if weight or bonus else None, lm_weight=weight, length_bonus=bonus)
        _, scores = score_split(decode, data[split], vocab, cfg)
        out = {"lm_weight": weight, "length_bonus": bonus,
               **{k: scores[k] for k in ("cer", "wer", "utterances", "seconds")}}
        if "per_speaker" in scores:
            out["per_speaker_cer"] = {s: v["cer"] for s, v in scores["per_speaker"].items()}
        print(split, {k: out[k] for k in ("lm_weight", "length_bonus", "cer", "wer")}, flush=True)
        return out

    pairs = [(0.0, 0.0)] + [(float(w), float(b)) for w, b in
                            itertools.product(FLAGS.weights, FLAGS.bonuses) if float(w) or float(b)]
    valid = [score("valid", w, b) for w, b in pairs]
    best = min(valid, key=lambda r: (r["cer"], r["wer"], r["lm_weight"]))
    test = {"no_fusion": score("test", 0.0, 0.0)}
    if best["lm_weight"] or best["length_bonus"]:
        test["chosen"] = score("test", best["lm_weight"], best["length_bonus"])
    common.emit({**common.record("lm_fusion"), "model_dir": cfg.model_dir,
                 "ctc_decode_weight": cfg.ctc_decode_weight, "beam_size": cfg.beam_size,
                 "char_lm": lm_info, "chosen": {k: best[k] for k in ("lm_weight", "length_bonus")},
                 "valid": valid, "test": test}, FLAGS.out)


if __name__ == "__main__":
    common.run(main)
