#!/usr/bin/env python
"""Train the micro CogVideoX DiT on procedural videos and save the pipeline (deterministic, CPU).

    python scripts/train_micro.py --steps 2000 --threads 2 --out src/asymrnr/data/micro-cogvideox

Objective: CogVideoX's v-prediction with the pipeline's own scheduler (``add_noise`` / ``get_velocity``),
uniform training timesteps, 10 % prompt dropout (the empty prompt, as the pipeline's negative prompt) so
that classifier-free guidance works, AdamW with warm-up and cosine decay, and an EMA of the weights (the
EMA is what is saved). Same seed and thread count -> same weights. Options for motion: ``--t-power 2`` biases
the training timesteps to high noise (where layout and motion are decided) and ``--obj-weight 4`` weights the
loss on the latent pixels of the object (plain uniform MSE without them). ``--out`` is replaced as a whole.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--cfg-drop", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="stop early (and save) after this much wall time; makes the result timing-dependent")
    ap.add_argument("--init", type=Path, default=None,
                    help="continue from a saved micro pipeline folder (its transformer weights); use another --seed")
    ap.add_argument("--out", type=Path, default=Path("src/asymrnr/data/micro-cogvideox"))
    ap.add_argument("--ckpt", type=Path, default=None, help="also save the EMA transformer here every --ckpt-every steps")
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--t-power", type=float, default=1.0,
                    help="training timesteps t = T * u ** (1 / p): p > 1 favours high-noise steps (layout, motion)")
    ap.add_argument("--obj-weight", type=float, default=0.0,
                    help="extra loss weight on latent pixels at / next to the (saturated) object: 1 + w * mask")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from asymrnr.micro import data as D
    from asymrnr.micro.model import MICRO_TEXT_LEN, build_untrained_pipeline

    t_start = time.time()
    train_attrs, heldout = D.split_prompts()
    pipe = build_untrained_pipeline(seed=args.seed)
    if args.init is not None:
        from diffusers import CogVideoXTransformer3DModel

        init = CogVideoXTransformer3DModel.from_pretrained(args.init / "transformer")
        pipe.transformer.load_state_dict(init.state_dict())
        print(f"initialised the transformer from {args.init}", flush=True)

    # latent scale: 1 / std of the codec's latents over a fixed sample of training videos
    keyframes = list(range(0, D.NUM_FRAMES, 4))
    vids, _ = D.render_batch(train_attrs[::11][:128], seed=10_000, frames_idx=keyframes)
    z = pipe.vae.encode_keyframes(torch.from_numpy(vids).permute(0, 4, 1, 2, 3) * 2 - 1)
    scaling = float(1.0 / z.std())
    pipe.vae.register_to_config(scaling_factor=round(scaling, 6))
    print(f"latent std {z.std():.4f} -> scaling_factor {scaling:.4f}", flush=True)

    # frozen text features of every training prompt and of the empty prompt
    prompts = [D.make_prompt(*a) for a in train_attrs]
    with torch.no_grad():
        embs = []
        for i in range(0, len(prompts), 128):
            e, _ = pipe.encode_prompt(prompts[i:i + 128], do_classifier_free_guidance=False,
                                      max_sequence_length=MICRO_TEXT_LEN, device=torch.device("cpu"))
            embs.append(e)
        text_emb = torch.cat(embs)
        empty, _ = pipe.encode_prompt([""], do_classifier_free_guidance=False, max_sequence_length=MICRO_TEXT_LEN,
                                      device=torch.device("cpu"))
    print(f"text features {tuple(text_emb.shape)} in {time.time() - t_start:.1f}s", flush=True)

    n_lat = len(keyframes)
    rope = pipe._prepare_rotary_positional_embeddings(D.HEIGHT, D.WIDTH, n_lat, torch.device("cpu"))
    sched = pipe.scheduler
    model = pipe.transformer.train()
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    n_params = sum(p.numel() for p in model.parameters())
    print(f"transformer: {n_params / 1e6:.2f} M parameters", flush=True)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.99))

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        s = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s)))

    def save_transformer(path: Path) -> None:
        sd = model.state_dict()
        backup = {k: v.detach().clone() for k, v in sd.items()}
        model.load_state_dict(ema)
        model.save_pretrained(path, safe_serialization=True)
        model.load_state_dict(backup)

    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    losses: list[float] = []
    history = []
    step = 0
    t_loop = time.time()
    stopped_early = False
    for step in range(args.steps):
        idx = rng.integers(0, len(train_attrs), size=args.batch)
        vids, _ = D.render_batch([train_attrs[i] for i in idx], seed=int(rng.integers(0, 2**31 - 1)),
                                 frames_idx=keyframes)
        x = torch.from_numpy(vids).permute(0, 4, 1, 2, 3) * 2 - 1  # [B, 3, F', H, W]
        with torch.no_grad():
            z0 = pipe.vae.encode_keyframes(x).permute(0, 2, 1, 3, 4) * scaling  # [B, F', C, h, w]
        noise = torch.randn(z0.shape, generator=gen)
        T = sched.config.num_train_timesteps
        if args.t_power == 1.0:
            t = torch.randint(0, T, (args.batch,), generator=gen)
        else:
            u = torch.rand(args.batch, generator=gen)
            t = (T * u ** (1.0 / args.t_power)).long().clamp(0, T - 1)
        noisy = sched.add_noise(z0, noise, t)
        target = sched.get_velocity(z0, noise, t)
        emb = text_emb[torch.from_numpy(idx)]
        drop = torch.rand(args.batch, generator=gen) < args.cfg_drop
        emb = torch.where(drop[:, None, None], empty.expand_as(emb), emb)

        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        pred = model(hidden_states=noisy, encoder_hidden_states=emb, timestep=t, image_rotary_emb=rope,
                     return_dict=False)[0]
        if args.obj_weight > 0:
            # the object is the only saturated thing in the frame: weight its latent pixels (dilated by one)
            sat = (x.max(1).values - x.min(1).values) / 2  # [B, F', H, W]
            m = torch.nn.functional.max_pool2d((sat > 0.3).float(), 4)  # latent grid
            m = torch.nn.functional.max_pool2d(m, 3, stride=1, padding=1)
            w = (1.0 + args.obj_weight * m)[:, :, None]  # [B, F', 1, h, w]
            err = (pred - target) ** 2
            loss = (w * err).mean() / w.mean()
            plain = float(err.mean())
        else:
            loss = torch.nn.functional.mse_loss(pred, target)
            plain = float(loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            d = min(args.ema, (1 + step) / (10 + step))
            for k, v in model.state_dict().items():
                if v.dtype.is_floating_point:
                    ema[k].mul_(d).add_(v.detach(), alpha=1 - d)
        losses.append(plain)
        if (step + 1) % args.log_every == 0:
            el = time.time() - t_loop
            avg = float(np.mean(losses[-args.log_every:]))
            history.append({"step": step + 1, "loss": avg, "elapsed_s": round(el, 1)})
            print(f"step {step + 1:5d}  loss {avg:.4f}  lr {lr_at(step):.2e}  {el / (step + 1):.2f}s/step  "
                  f"elapsed {el / 60:.1f} min", flush=True)
        if args.ckpt and (step + 1) % args.ckpt_every == 0:
            save_transformer(args.ckpt)
        if args.max_minutes and time.time() - t_loop > args.max_minutes * 60:
            stopped_early = True
            print(f"stopping early after {step + 1} steps (--max-minutes {args.max_minutes})", flush=True)
            break

    steps_done = step + 1
    model.load_state_dict(ema)
    model.eval()
    out = args.out
    tmp = out.parent / (out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    from asymrnr.models.loading import quiet_progress_bars

    with quiet_progress_bars():
        pipe.save_pretrained(tmp, safe_serialization=True)
    info = {
        "init": None if args.init is None else str(args.init),
        "steps": steps_done, "planned_steps": args.steps, "stopped_early": stopped_early, "batch": args.batch,
        "lr": args.lr, "warmup": args.warmup, "t_power": args.t_power, "obj_weight": args.obj_weight, "ema": args.ema, "cfg_drop": args.cfg_drop, "seed": args.seed, "threads": args.threads,
        "final_loss_last100": float(np.mean(losses[-100:])), "train_minutes": round((time.time() - t_loop) / 60, 2),
        "total_minutes": round((time.time() - t_start) / 60, 2), "scaling_factor": round(scaling, 6),
        "transformer_parameters": n_params, "history": history,
        "command": "python scripts/train_micro.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    if args.init is not None and (args.init / "training.json").is_file():
        info["previous"] = json.loads((args.init / "training.json").read_text())
    (tmp / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    print(f"saved {out} after {steps_done} steps; final loss {info['final_loss_last100']:.4f}; "
          f"{info['total_minutes']} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
