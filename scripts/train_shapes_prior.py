"""Train the shapes-world prior p(image | object phrase, position) with EDM preconditioning.

Scenes come from a pool of pybullet-simulated scenes that grows during training; each batch element
is a pool scene with its colours permuted and maybe mirrored, rendered on the fly. The phrase is one
object of the scene (dropped with prob. --p-null, its size with --p-no-size); the position is that
object's pixel centroid (dropped with prob. --p-no-pos).

    python scripts/train_shapes_prior.py --out runs/prior --minutes 600 --resume
    python scripts/train_shapes_prior.py --out runs/prior --export --export-dir poegen/experts/shapes/weights  # ships it
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from poegen.experts.shapes.model import WEIGHTS_DIR, ShapesDenoiser, count_parameters, load_prior, position_map, save_prior  # noqa: E402
from poegen.experts.shapes.render import centroid, render  # noqa: E402
from poegen.experts.shapes.world import COLOUR_NAMES, SHAPES, SIZE_NAMES, random_scene  # noqa: E402


def parse_args():
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/prior")
    ap.add_argument("--minutes", type=float, default=60.0, help="total training budget (cumulative over resumes)")
    ap.add_argument("--iters", type=int, default=None, help="stop after this many iterations (total)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--p-null", type=float, default=0.15)
    ap.add_argument("--p-no-size", type=float, default=0.3)
    ap.add_argument("--p-no-pos", type=float, default=0.4)
    ap.add_argument("--p-mean", type=float, default=-0.4)
    ap.add_argument("--p-std", type=float, default=1.4)
    ap.add_argument("--pool", type=int, default=1500, help="initial number of simulated scenes")
    ap.add_argument("--pool-max", type=int, default=30000)
    ap.add_argument("--ckpt-minutes", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--export", action="store_true", help="export the checkpoint's EMA weights and exit")
    ap.add_argument("--export-dir", default=None,
                    help="where the EMA weights go (default: OUT/weights; poegen/experts/shapes/weights "
                         "replaces the shipped ones)")
    return ap.parse_args()


def atomic_save(obj, path: Path):
    """torch.save to a temporary file, then os.replace."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def optimise(opt, net, ema, loss, lr: float, step: int, ema_rate: float):
    """One Adam step of ``loss`` at learning rate lr (gradients clipped to norm 1), then ema <- the exponential
    moving average of net's parameters after step + 1 steps (warmed up: decay (1 + s) / (10 + s) until ema_rate)."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    decay = min(ema_rate, (2 + step) / (11 + step))
    with torch.no_grad():
        for pe, pn in zip(ema.parameters(), net.parameters()):
            pe.lerp_(pn, 1 - decay)


def resume(ckpt: Path, net, ema, opt):
    """(step, minutes) of the checkpoint ``ckpt``, its weights and optimizer state loaded; None when it is missing."""
    if not ckpt.exists():
        return None
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    net.load_state_dict(ck["net"])
    ema.load_state_dict(ck["ema"])
    opt.load_state_dict(ck["opt"])
    print(f"resumed from {ckpt} at step {ck['step']} ({ck['minutes']:.1f} min)", flush=True)
    return ck["step"], ck["minutes"]


def loss_log(path: Path, header):
    """(open file, csv writer) appending to ``path``; the header row goes into a new file."""
    new = not path.exists()
    logf = open(path, "a", newline="")
    writer = csv.writer(logf)
    if new:
        writer.writerow(header)
    return logf, writer


def make_batch(pool, rng: np.random.Generator, args):
    """Render a batch: (x0 (B,3,32,32), ids (B,3) long, pos_map (B,1,32,32))."""
    xs, ids, positions = [], [], []
    for _ in range(args.batch):
        scene = pool[rng.integers(len(pool))]
        perm = rng.permutation(len(COLOUR_NAMES))
        scene = scene.recoloured({c: COLOUR_NAMES[perm[i]] for i, c in enumerate(COLOUR_NAMES)})
        if rng.random() < 0.5:
            scene = scene.mirrored()
        img, masks = render(scene)
        k = int(rng.integers(len(scene.objects)))
        o = scene.objects[k]
        c, s, z = COLOUR_NAMES.index(o.colour), SHAPES.index(o.shape), SIZE_NAMES.index(o.size)
        if rng.random() < args.p_no_size:
            z = len(SIZE_NAMES)
        if rng.random() < args.p_null:
            c, s, z = len(COLOUR_NAMES), len(SHAPES), len(SIZE_NAMES)
        pos = centroid(masks[k]) if masks[k].sum() > 0.5 and rng.random() >= args.p_no_pos else None
        xs.append(img)
        ids.append((c, s, z))
        positions.append(pos)
    return torch.from_numpy(np.stack(xs)), torch.tensor(ids, dtype=torch.long), position_map(positions)


def edm_loss(net, x0, ids, pos_map, args):
    """EDM loss: log-normal sigma, weight (sigma^2 + sd^2) / (sigma sd)^2."""
    sd = net.config["sigma_data"]
    sigma = torch.exp(args.p_mean + args.p_std * torch.randn(x0.shape[0]))
    sigma = sigma.clamp(net.config["sigma_min"], net.config["sigma_max"])
    x = x0 + sigma.view(-1, 1, 1, 1) * torch.randn_like(x0)
    d = net(x, sigma, ids, pos_map)
    w = ((sigma**2 + sd**2) / (sigma * sd) ** 2).view(-1, 1, 1, 1)
    return (w * (d - x0) ** 2).mean()


def export(out: Path, export_dir: str):
    """Write the checkpoint's EMA weights (fp16) + config into export_dir."""
    ck = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=False)
    net = ShapesDenoiser(ck["config"])
    net.load_state_dict(ck["ema"])
    path = save_prior(net, export_dir, extra={"trained_iters": ck["step"], "trained_minutes": round(ck["minutes"], 1),
                                              "batch": ck["args"]["batch"]})
    print(f"exported EMA at step {ck['step']} ({ck['minutes']:.0f} min) to {path} "
          f"({path.stat().st_size / 1e6:.1f} MB)")


def main():
    """Train (or export) the prior."""
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.export_dir = args.export_dir or str(out / "weights")
    if args.export:
        export(out, args.export_dir)
        return
    torch.set_num_threads(args.threads)
    net = ShapesDenoiser()
    ema = ShapesDenoiser()
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    step, minutes = 0, 0.0
    ckpt = out / "ckpt.pt"
    resumed = resume(ckpt, net, ema, opt) if args.resume else None
    if resumed:
        step, minutes = resumed
    elif args.resume and (WEIGHTS_DIR / "prior.safetensors").exists():
        # a fresh checkout has no checkpoint: go on from the committed EMA weights (optimizer restarts)
        shipped = load_prior(WEIGHTS_DIR).net
        net.load_state_dict(shipped.state_dict())
        ema.load_state_dict(shipped.state_dict())
        step, minutes = int(shipped.config.get("trained_iters", 0)), float(shipped.config.get("trained_minutes", 0.0))
        print(f"no checkpoint in {out}: continuing from the shipped weights at step {step} ({minutes:.1f} min)",
              flush=True)
    print(f"prior: {count_parameters(net)} parameters, batch {args.batch}, threads {args.threads}", flush=True)

    rng = np.random.default_rng(args.seed + step)
    pool_file = out / "pool.pkl"
    pool = pickle.loads(pool_file.read_bytes()) if pool_file.exists() else []
    t0 = time.time()
    while len(pool) < args.pool:
        pool.append(random_scene(rng))
    if len(pool) > 0 and not pool_file.exists():
        pool_file.write_bytes(pickle.dumps(pool))
    print(f"scene pool: {len(pool)} scenes ({time.time() - t0:.0f} s)", flush=True)

    logf, writer = loss_log(out / "loss.csv", ["step", "minutes", "loss", "lr", "sec_per_iter", "pool"])
    losses, t_last_ckpt, t_start, t_log = [], time.time(), time.time(), time.time()
    minutes0 = minutes

    def save():
        """Checkpoint everything needed to resume, atomically."""
        atomic_save({"net": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
                     "minutes": minutes, "config": net.config, "args": vars(args)}, ckpt)
        tmp = pool_file.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(pool))
        os.replace(tmp, pool_file)

    while minutes < args.minutes and (args.iters is None or step < args.iters):
        # grow / refresh the scene pool by one simulated scene per iteration
        scene = random_scene(rng)
        if len(pool) < args.pool_max:
            pool.append(scene)
        else:
            pool[rng.integers(len(pool))] = scene
        x0, ids, pos_map = make_batch(pool, rng, args)
        lr = args.lr * min(1.0, (step + 1) / 500)
        loss = edm_loss(net, x0, ids, pos_map, args)
        optimise(opt, net, ema, loss, lr, step, args.ema)
        step += 1
        losses.append(loss.item())
        minutes = minutes0 + (time.time() - t_start) / 60
        if step % 100 == 0:
            dt = (time.time() - t_log) / 100
            t_log = time.time()
            writer.writerow([step, round(minutes, 2), round(float(np.mean(losses)), 5), lr, round(dt, 4), len(pool)])
            logf.flush()
            print(f"step {step} min {minutes:.1f} loss {np.mean(losses):.4f} {1 / dt:.2f} it/s pool {len(pool)}",
                  flush=True)
            losses = []
        if time.time() - t_last_ckpt > args.ckpt_minutes * 60:
            save()
            t_last_ckpt = time.time()
    save()
    logf.close()
    print(f"done at step {step} ({minutes:.1f} min); exporting", flush=True)
    export(out, args.export_dir)


if __name__ == "__main__":
    main()
