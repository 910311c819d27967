#!/usr/bin/env python
"""Dense checker accuracy of a micro model on the 32 held-out prompts (CPU).

    python scripts/eval_micro.py --variant micro-cogvideox-large --model-path runs/micro-cogvideox-large
    python scripts/eval_micro.py --variant micro-cogvideox-large --checkpoint runs/train-large.ckpt/checkpoint.pt \\
        --init src/asymrnr/data/micro-cogvideox

``--checkpoint`` evaluates the EMA weights of a training checkpoint of ``scripts/train_micro.py`` (loaded
into the pipeline of ``--init``, or of the shipped variant). ``--repeats R`` generates every prompt with R
seeds. Prints the accuracy and the misses.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="micro-cogvideox")
    ap.add_argument("--model-path", type=Path, default=None)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--init", type=Path, default=None, help="with --checkpoint: the pipeline folder to load it into")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--num-prompts", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from diffusers import CogVideoXTransformer3DModel

    from asymrnr.micro.evaluate import checker_accuracy, generate, heldout_prompts, heldout_seeds
    from asymrnr.micro.model import VARIANTS, call_kwargs, default_weights_dir, load_micro_pipeline, transformer_config

    spec = VARIANTS[args.variant]
    base = args.model_path or args.init or default_weights_dir(args.variant)
    pipe = load_micro_pipeline(base)
    if args.checkpoint is not None:
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        cfg = transformer_config(spec)
        pipe.transformer = CogVideoXTransformer3DModel(**cfg)
        pipe.transformer.load_state_dict(state["ema"]["transformer"])
        if "text_encoder" in state["ema"]:
            pipe.text_encoder.load_state_dict(state["ema"]["text_encoder"])
        pipe.transformer.eval()
        print(f"EMA weights of {args.checkpoint} at step {state['step']}", flush=True)
    pipe.set_progress_bar_config(disable=True)
    settings = call_kwargs(spec)
    prompts = heldout_prompts(args.num_prompts)
    accs = []
    all_misses = []
    for r in range(args.repeats):
        videos = generate(pipe, prompts, heldout_seeds(len(prompts), r), settings, batch=args.batch)
        res = checker_accuracy(videos, prompts)
        accs.append(res["accuracy"])
        all_misses += [(r, *m) for m in res["misses"]]
        print(f"repeat {r}: accuracy {res['accuracy']:.3f} (colour {res['colour']:.3f}, motion {res['motion']:.3f})",
              flush=True)
    mean = sum(accs) / len(accs)
    print(f"mean accuracy over {args.repeats} repeat(s) x {len(prompts)} prompts: {mean:.4f}")
    for m in all_misses:
        print("  miss:", m)
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "accuracy": accs, "mean": mean,
                                         "misses": all_misses}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
