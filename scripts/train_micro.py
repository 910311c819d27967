#!/usr/bin/env python
"""Train a micro CogVideoX DiT on procedural videos and save the pipeline (deterministic, CPU, resumable).

    python scripts/train_micro.py --variant micro-cogvideox-large --init src/asymrnr/data/micro-cogvideox \\
        --train-text-encoder --steps 6000 --threads 1 --out src/asymrnr/data/micro-cogvideox-large

Objective: CogVideoX's v-prediction with the pipeline's own scheduler (``add_noise`` / ``get_velocity``),
10 % prompt dropout (the empty prompt, as the pipeline's negative prompt) so that classifier-free guidance
works, AdamW with warm-up and cosine decay, and an EMA of the weights (the EMA is what is saved).
``--t-power 2`` biases the training timesteps to high noise (where layout and motion are decided) and
``--obj-weight 4`` weights the loss on the latent pixels of the object.

Text path: ``--train-text-encoder`` trains the one-layer T5 together with the transformer (with the same
optimiser). A frozen random T5 barely tells "moves left ..., the camera pans right" from its mirror, because
CogVideoX's text tokens carry no position of their own; a trained encoder learns which slot a word is in.

Resuming: training state (weights, EMA, optimiser, every random generator, loss history) is saved to
``--ckpt-dir`` (default ``OUT.ckpt``) every ``--ckpt-minutes`` (10) and when the process is interrupted
(Ctrl-C, SIGTERM) or stops at ``--max-minutes``. Running the same command again resumes from it; a command
whose training options differ is refused, naming them. Given the seed, the thread count and the
checkpoint, the result is the same as one uninterrupted run (test_micro_training pins that).
``OUT/training.json`` records every sitting's exact command, steps, CPU and wall time. ``--out`` is
written atomically, only when every step is done.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

#: Options that change the trained weights; a checkpoint resumes only under the same values.
TRAINING_OPTIONS = (
    "variant", "init", "train_text_encoder", "steps", "batch", "lr", "warmup", "ema", "cfg_drop", "seed",
    "threads", "t_power", "obj_weight", "tiny",
)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="micro-cogvideox", help="micro-cogvideox (48x48x13) or micro-cogvideox-large (64x96x25)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--cfg-drop", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--init", type=Path, default=None,
                    help="start from a saved micro pipeline folder (its transformer, and its text encoder); use another --seed")
    ap.add_argument("--train-text-encoder", action="store_true", help="train the T5 text encoder with the transformer")
    ap.add_argument("--t-power", type=float, default=1.0,
                    help="training timesteps t = T * u ** (1 / p): p > 1 favours high-noise steps (layout, motion)")
    ap.add_argument("--obj-weight", type=float, default=0.0,
                    help="extra loss weight on latent pixels at / next to the (saturated) object: 1 + w * mask")
    ap.add_argument("--out", type=Path, default=None, help="pipeline folder to write (default src/asymrnr/data/VARIANT)")
    ap.add_argument("--ckpt-dir", type=Path, default=None, help="checkpoint folder (default OUT.ckpt)")
    ap.add_argument("--ckpt-minutes", type=float, default=10.0, help="save a checkpoint at least this often")
    ap.add_argument("--ckpt-every", type=int, default=None, help="also save a checkpoint every N steps")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="end this sitting (with a checkpoint) after this much wall time; run again to resume")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--export-checkpoint", action="store_true",
                    help="write OUT from the latest checkpoint's EMA weights without training (a model still in "
                         "training: training.json says how many of the steps are done); same options as the run")
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # a 1-block, 8 px model for tests
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = Path("src/asymrnr/data") / args.variant
    if args.ckpt_dir is None:
        args.ckpt_dir = args.out.parent / (args.out.name + ".ckpt")
    return args


def training_options(args: argparse.Namespace) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k in TRAINING_OPTIONS}


class Checkpoints:
    """The latest training state in one file, replaced atomically (``os.replace`` of a fresh temporary)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / "checkpoint.pt"

    def load(self, options: dict) -> dict | None:
        if not self.path.is_file():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        differ = {k: (state["options"].get(k), v) for k, v in options.items() if state["options"].get(k) != v}
        if differ:
            text = "; ".join(f"--{k.replace('_', '-')}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differ.items())
            raise SystemExit(f"error: {self.path} was made with other training options ({text}); run the same "
                             f"command to resume, or pass another --ckpt-dir to start afresh")
        return state

    def save(self, state: dict) -> None:
        import tempfile

        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=self.folder)
        os.close(fd)
        try:
            torch.save(state, tmp)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


@torch.enable_grad()  # whatever the caller's grad mode (tests call main() in-process)
def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from asymrnr.micro import data as D
    from asymrnr.micro.model import MICRO_TEXT_LEN, VARIANTS, build_untrained_pipeline

    if args.variant not in VARIANTS:
        raise SystemExit(f"error: unknown --variant {args.variant!r}; known: {', '.join(VARIANTS)}")
    spec = VARIANTS[args.variant]
    overrides = None
    if args.tiny:
        spec = D.VideoSpec(16, 16, 5)
        overrides = dict(num_layers=1, num_attention_heads=2, attention_head_dim=16)
    options = training_options(args)
    command = "python scripts/train_micro.py " + " ".join(sys.argv[1:] if argv is None else argv)

    t_start, cpu_start = time.time(), time.process_time()
    torch.manual_seed(args.seed)
    train_attrs, _ = D.split_prompts()
    pipe = build_untrained_pipeline(seed=args.seed, transformer_overrides=overrides, spec=spec)
    if args.init is not None:
        from diffusers import CogVideoXTransformer3DModel
        from transformers import T5EncoderModel

        init = CogVideoXTransformer3DModel.from_pretrained(args.init / "transformer")
        pipe.transformer.load_state_dict(init.state_dict())
        if (args.init / "text_encoder").is_dir():
            pipe.text_encoder.load_state_dict(T5EncoderModel.from_pretrained(args.init / "text_encoder").state_dict())
        print(f"initialised the transformer and text encoder from {args.init}", flush=True)

    keyframes = list(range(0, spec.num_frames, 4))
    if args.init is not None and (args.init / "vae" / "config.json").is_file():
        # keep the latent scale the initial weights were trained with
        scaling = float(json.loads((args.init / "vae" / "config.json").read_text())["scaling_factor"])
    else:
        # latent scale: 1 / std of the codec's latents over a fixed sample of training videos
        vids, _ = D.render_batch(train_attrs[::11][:128], seed=10_000, frames_idx=keyframes, spec=spec)
        z = pipe.vae.encode_keyframes(torch.from_numpy(vids).permute(0, 4, 1, 2, 3) * 2 - 1)
        scaling = round(float(1.0 / z.std()), 6)
    pipe.vae.register_to_config(scaling_factor=scaling)

    # token ids of every training prompt and of the empty prompt, exactly as the pipeline tokenizes them
    def token_ids(prompts: list[str]) -> torch.Tensor:
        return pipe.tokenizer(prompts, padding="max_length", max_length=MICRO_TEXT_LEN, truncation=True,
                              add_special_tokens=True, return_tensors="pt").input_ids

    ids_train = token_ids([D.make_prompt(*a) for a in train_attrs])
    ids_empty = token_ids([""])
    text_encoder = pipe.text_encoder
    text_encoder.requires_grad_(args.train_text_encoder)
    if not args.train_text_encoder:
        with torch.no_grad():
            feats_train = text_encoder(ids_train)[0]
            feats_empty = text_encoder(ids_empty)[0]

    n_lat = len(keyframes)
    rope = pipe._prepare_rotary_positional_embeddings(spec.height, spec.width, n_lat, torch.device("cpu"))
    sched = pipe.scheduler
    model = pipe.transformer.train()
    text_encoder.train(args.train_text_encoder)
    trained = {"transformer": model} | ({"text_encoder": text_encoder} if args.train_text_encoder else {})
    n_params = {k: sum(p.numel() for p in m.parameters()) for k, m in trained.items()}
    print(f"trained parameters: {n_params}", flush=True)
    decay, no_decay = [], []
    for m in trained.values():
        for name, p in m.named_parameters():
            (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.99))

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        s = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s)))

    ema = {k: {n: v.detach().clone() for n, v in m.state_dict().items()} for k, m in trained.items()}
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    losses: list[float] = []
    history: list[dict] = []
    sittings: list[dict] = []
    start_step = 0

    ckpts = Checkpoints(args.ckpt_dir)
    state = ckpts.load(options)
    if state is not None:
        for k, m in trained.items():
            m.load_state_dict(state["weights"][k])
        ema = state["ema"]
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["numpy_rng"]
        gen.set_state(state["torch_generator"])
        torch.set_rng_state(state["torch_rng"])
        losses, history, sittings = state["losses"], state["history"], state["sittings"]
        start_step = state["step"]
        print(f"resumed from {ckpts.path} at step {start_step} of {args.steps}", flush=True)

    sitting = {"command": command, "threads": args.threads, "start_step": start_step,
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def snapshot(step: int) -> dict:
        sitting.update(end_step=step, cpu_s=round(time.process_time() - cpu_start, 1),
                       wall_s=round(time.time() - t_start, 1))
        return {
            "options": options, "step": step, "weights": {k: m.state_dict() for k, m in trained.items()},
            "ema": ema, "optimizer": opt.state_dict(), "numpy_rng": rng.bit_generator.state,
            "torch_generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "losses": losses,
            "history": history, "sittings": sittings + [dict(sitting)],
        }

    stop = {"signal": None}

    def on_signal(signum, frame):  # finish the step in flight, save, exit
        stop["signal"] = signum

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    t_loop = time.time()
    last_ckpt = time.time()
    step = start_step
    T = sched.config.num_train_timesteps
    try:
        while step < args.steps and not args.export_checkpoint:
            idx = rng.integers(0, len(train_attrs), size=args.batch)
            vids, _ = D.render_batch([train_attrs[i] for i in idx], seed=int(rng.integers(0, 2**31 - 1)),
                                     frames_idx=keyframes, spec=spec)
            x = torch.from_numpy(vids).permute(0, 4, 1, 2, 3) * 2 - 1  # [B, 3, F', H, W]
            with torch.no_grad():
                z0 = pipe.vae.encode_keyframes(x).permute(0, 2, 1, 3, 4) * scaling  # [B, F', C, h, w]
            noise = torch.randn(z0.shape, generator=gen)
            if args.t_power == 1.0:
                t = torch.randint(0, T, (args.batch,), generator=gen)
            else:
                u = torch.rand(args.batch, generator=gen)
                t = (T * u ** (1.0 / args.t_power)).long().clamp(0, T - 1)
            noisy = sched.add_noise(z0, noise, t)
            target = sched.get_velocity(z0, noise, t)
            drop = torch.rand(args.batch, generator=gen) < args.cfg_drop
            sel = torch.from_numpy(idx)
            if args.train_text_encoder:
                ids = torch.where(drop[:, None], ids_empty.expand(args.batch, -1), ids_train[sel])
                emb = text_encoder(ids)[0]
            else:
                emb = torch.where(drop[:, None, None], feats_empty.expand(args.batch, -1, -1), feats_train[sel])

            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            pred = model(hidden_states=noisy, encoder_hidden_states=emb, timestep=t, image_rotary_emb=rope,
                         return_dict=False)[0]
            err = (pred - target) ** 2
            if args.obj_weight > 0:
                # the object is the only saturated thing in the frame: weight its latent pixels (dilated by one)
                sat = (x.max(1).values - x.min(1).values) / 2  # [B, F', H, W]
                m = torch.nn.functional.max_pool2d((sat > 0.3).float(), 4)  # latent grid
                m = torch.nn.functional.max_pool2d(m, 3, stride=1, padding=1)
                w = (1.0 + args.obj_weight * m)[:, :, None]  # [B, F', 1, h, w]
                loss = (w * err).mean() / w.mean()
            else:
                loss = err.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
            opt.step()
            with torch.no_grad():
                d = min(args.ema, (1 + step) / (10 + step))
                for k, m_ in trained.items():
                    for n, v in m_.state_dict().items():
                        if v.dtype.is_floating_point:
                            ema[k][n].mul_(d).add_(v.detach(), alpha=1 - d)
            losses.append(float(err.detach().mean()))
            step += 1
            if step % args.log_every == 0:
                el = time.time() - t_loop
                avg = float(np.mean(losses[-args.log_every:]))
                history.append({"step": step, "loss": avg})
                print(f"step {step:5d}  loss {avg:.4f}  lr {lr_at(step - 1):.2e}  "
                      f"{el / (step - start_step):.2f}s/step  sitting {el / 60:.1f} min", flush=True)
            out_of_time = args.max_minutes is not None and time.time() - t_loop > args.max_minutes * 60
            due = (time.time() - last_ckpt > args.ckpt_minutes * 60
                   or (args.ckpt_every is not None and step % args.ckpt_every == 0))
            if step < args.steps and (due or out_of_time or stop["signal"] is not None):
                ckpts.save(snapshot(step))
                last_ckpt = time.time()
                print(f"checkpoint at step {step}: {ckpts.path}", flush=True)
            if step < args.steps and (out_of_time or stop["signal"] is not None):
                why = "interrupted" if stop["signal"] is not None else f"--max-minutes {args.max_minutes}"
                print(f"stopped at step {step} of {args.steps} ({why}); run the same command to resume", flush=True)
                return 130 if stop["signal"] is not None else 0
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)

    if args.export_checkpoint:
        if state is None:
            raise SystemExit(f"error: no checkpoint in {args.ckpt_dir}; --export-checkpoint writes a started run's "
                             "latest state (run the training command first)")
        final = state  # its sittings, unchanged: exporting trains nothing
    else:
        final = snapshot(step)
    for k, m_ in trained.items():
        m_.load_state_dict(ema[k])
        m_.eval()
    out = args.out
    tmp = out.parent / (out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    from asymrnr.models.loading import quiet_progress_bars

    with quiet_progress_bars():
        pipe.save_pretrained(tmp, safe_serialization=True)
    info = {
        "variant": args.variant, "video": {"height": spec.height, "width": spec.width, "num_frames": spec.num_frames},
        "options": options, "steps": step, "in_progress": step < args.steps, "scaling_factor": scaling,
        "trained_parameters": n_params,
        "final_loss_last100": float(np.mean(losses[-100:])),
        "cpu_minutes": round(sum(s["cpu_s"] for s in final["sittings"]) / 60, 2),
        "wall_minutes": round(sum(s["wall_s"] for s in final["sittings"]) / 60, 2),
        "sittings": final["sittings"], "history": history,
    }
    if args.init is not None and (args.init / "training.json").is_file():
        info["previous"] = json.loads((args.init / "training.json").read_text())
    (tmp / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    if not args.export_checkpoint:
        ckpts.save(final)  # running the same command again rewrites OUT from this state
    print(f"saved {out} after {step} of {args.steps} steps; final loss {info['final_loss_last100']:.4f}; "
          f"{info['cpu_minutes']} CPU-min over {len(final['sittings'])} sitting(s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
