"""Train the shapes world's video prior: the correction ``TemporalNet`` on top of the frozen image prior.

Clips are simulated with pybullet and rendered by the project's rasteriser (``motion.trajectory``), F frames spread
over the simulated time, from four kinds of scene: an object pushed off a box (the scenes of the motion prompts,
with random objects, places and speeds), a settled random scene with some objects pushed, objects dropped from the
air, and a still scene. They are simulated once into ``OUT/clips.pt`` (both cores), then mirrored at random while
training. The loss is EDM's on the video prior's x0 (``video.TemporalNet.correct``); the log also prints the same
loss of the image prior's frames alone (the correction at zero), so the gain is visible.

    python scripts/train_shapes_video.py --out runs/video --minutes 40 --resume
    python scripts/train_shapes_video.py --out runs/video --export --export-dir poegen/experts/shapes/weights  # ships it
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from poegen.experts.motion import trajectory  # noqa: E402
from poegen.experts.shapes.model import count_parameters, forward, load_prior, phrase_ids  # noqa: E402
from poegen.experts.shapes.video import TemporalNet, save_video_prior  # noqa: E402
from poegen.experts.shapes.world import (COLOUR_NAMES, SHAPES, SIZES, VIEW_WIDTH, random_objects,  # noqa: E402
                                         random_scene)
from poegen.hardware import pick_dtype  # noqa: E402
from poegen.product import PerFrame  # noqa: E402
from poegen.experts.scene import SceneError, parse_scene  # noqa: E402
from poegen.experts.shapes.motions import PUSH  # noqa: E402
from train_shapes_prior import atomic_save, loss_log, optimise, resume  # noqa: E402

KINDS = ("push-off", "pushed", "dropped", "still")
MIX = (0.4, 0.25, 0.15, 0.2)


def parse_args():
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/video")
    ap.add_argument("--clips", type=int, default=6000, help="simulated clips in the training set")
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--minutes", type=float, default=40.0, help="training budget (cumulative over resumes)")
    ap.add_argument("--iters", type=int, default=None, help="stop after this many iterations (total)")
    ap.add_argument("--batch", type=int, default=8, help="clips per step")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--p-mean", type=float, default=-0.4)
    ap.add_argument("--p-std", type=float, default=1.4)
    ap.add_argument("--ckpt-minutes", type=float, default=3.0)
    ap.add_argument("--workers", type=int, default=2, help="processes simulating the clips")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--export", action="store_true", help="export the checkpoint's EMA weights and exit")
    ap.add_argument("--export-dir", default=None,
                    help="where the EMA weights go (default: OUT/weights; poegen/experts/shapes/weights "
                         "replaces the shipped ones)")
    return ap.parse_args()


def push_off_spec(rng: np.random.Generator) -> dict:
    """An object on a box's top edge pushed towards the other edge (the motion prompts' scene, randomised)."""
    cb, cm = rng.choice(len(COLOUR_NAMES), 2, replace=False)
    size_b = "large" if rng.random() < 0.75 else "small"
    shape = SHAPES[rng.integers(len(SHAPES))]
    size_m = "small"
    sb, sm = SIZES[size_b], SIZES[size_m]
    x = float(rng.uniform(-VIEW_WIDTH / 2 + sb / 2 + 0.3, VIEW_WIDTH / 2 - sb / 2 - 0.3))
    side = 1.0 if rng.random() < 0.5 else -1.0
    speed = PUSH[shape] * float(rng.uniform(0.6, 1.3))
    return {"objects": [
        {"name": "support", "shape": "box", "colour": COLOUR_NAMES[cb], "size": size_b, "position": [x, sb / 2]},
        {"name": "mover", "shape": shape, "colour": COLOUR_NAMES[cm], "size": size_m,
         "position": [x - side * (sb / 2 - sm / 2), sb + sm / 2 + 0.01], "velocity": [side * speed, 0.0]}],
        "physics": {"duration": 4.0 if rng.random() < 0.7 else float(rng.uniform(2.0, 5.0))}}


def simulated_clip(rng: np.random.Generator, frames: int) -> np.ndarray:
    """One clip (3, F, 32, 32) as uint8, of a scene kind drawn from MIX."""
    kind = KINDS[rng.choice(len(KINDS), p=MIX)]
    if kind == "push-off":
        spec = None
        while spec is None:  # a wedge near the view's edge can start outside it: draw again
            try:
                spec = parse_scene(push_off_spec(rng))
            except SceneError:
                pass
        traj = trajectory(spec, frames, (frames - 1) / spec.physics.duration, resolution=32)
    else:
        duration = float(rng.uniform(0.5, 3.0) if kind == "dropped" else rng.uniform(1.0, 4.0))
        objects = random_objects(rng, int(rng.integers(1, 4))) if kind == "dropped" else list(random_scene(rng).objects)
        velocities = None
        if kind == "pushed":
            velocities = [(float(rng.choice([-1, 1]) * rng.uniform(1.0, 5.0)), 0.0, 0.0) if rng.random() < 0.6
                          else (0.0, 0.0, 0.0) for _ in objects]
        fps = (frames - 1) / duration if kind != "still" else 1.0
        traj = trajectory(objects, frames, fps, resolution=32, velocities=velocities)
    return np.round((traj.clip().numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)


def _simulate(job):
    seed, count, frames = job
    logging.getLogger("poegen").setLevel(logging.ERROR)  # objects leaving the view are expected here
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    return np.stack([simulated_clip(rng, frames) for _ in range(count)])


def make_clips(n: int, frames: int, seed: int, workers: int) -> torch.Tensor:
    """n simulated clips (n, 3, F, 32, 32) uint8, in chunks over ``workers`` processes."""
    chunk = 100
    jobs = [(seed * 100003 + i, min(chunk, n - i * chunk), frames) for i in range((n + chunk - 1) // chunk)]
    with Pool(workers) as pool:
        parts = pool.map(_simulate, jobs)
    return torch.from_numpy(np.concatenate(parts))


def losses(net: TemporalNet, prior, clips: torch.Tensor, gen: torch.Generator, args):
    """(loss of the video prior, loss of the image prior's frames alone) on a batch of clips in [-1, 1]."""
    n, _, F = clips.shape[:3]
    sd = net.config["sigma_data"]
    sigma = torch.exp(args.p_mean + args.p_std * torch.randn(n, generator=gen)).clamp(0.002, 80.0)
    x = clips + sigma.view(-1, 1, 1, 1, 1) * torch.randn(clips.shape, generator=gen)
    frames = PerFrame.fold(x)
    ids = torch.tensor([phrase_ids(None)]).expand(n * F, 3)
    with torch.no_grad():
        x0 = forward(prior.net, "auto", frames, sigma.repeat_interleave(F), ids, torch.zeros(n * F, 1, 32, 32))
    x0 = x0.clamp(-1, 1).reshape(n, F, 3, 32, 32).transpose(1, 2)
    d = net.correct(x, x0, sigma)
    w = ((sigma**2 + sd**2) / (sigma * sd) ** 2).view(-1, 1, 1, 1, 1)
    return (w * (d - clips) ** 2).mean(), (w * (x0 - clips) ** 2).mean()


def export(out: Path, export_dir: str):
    """Write the checkpoint's EMA weights (fp16) + config into export_dir."""
    ck = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=False)
    net = TemporalNet(ck["config"])
    net.load_state_dict(ck["ema"])
    path = save_video_prior(net, export_dir, extra={"trained_iters": ck["step"], "trained_minutes":
                                                    round(ck["minutes"], 1), "batch": ck["args"]["batch"],
                                                    "clips": ck["args"]["clips"], "frames": ck["args"]["frames"]})
    print(f"exported EMA at step {ck['step']} ({ck['minutes']:.0f} min) to {path} ({path.stat().st_size / 1e6:.1f} MB)")


def main():
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.export_dir = args.export_dir or str(out / "weights")
    if args.export:
        return export(out, args.export_dir)
    torch.manual_seed(args.seed)
    data_file = out / "clips.pt"
    if data_file.exists():
        clips = torch.load(data_file)
    else:
        t0 = time.time()
        clips = make_clips(args.clips, args.frames, args.seed, args.workers)
        atomic_save(clips, data_file)
        print(f"simulated {len(clips)} clips in {time.time() - t0:.0f} s", flush=True)
    torch.set_num_threads(os.cpu_count() or 1)
    prior = load_prior()
    for p in prior.net.parameters():
        p.requires_grad_(False)
    net = TemporalNet()
    ema = TemporalNet()
    ema.load_state_dict(net.state_dict())
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    ckpt = out / "ckpt.pt"
    step, minutes = (resume(ckpt, net, ema, opt) if args.resume else None) or (0, 0.0)
    print(f"TemporalNet: {count_parameters(net)} parameters; {len(clips)} clips of {clips.shape[2]} frames; "
          f"prior dtype {pick_dtype('auto', torch.device('cpu'))[0]}", flush=True)
    gen = torch.Generator().manual_seed(args.seed * 7919 + step)
    logf, writer = loss_log(out / "loss.csv", ["step", "minutes", "loss", "frames_loss", "lr", "sec_per_iter"])
    seen, seen_frames, t_ckpt, t_start, t_log, minutes0 = [], [], time.time(), time.time(), time.time(), minutes

    def save():
        atomic_save({"net": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
                     "minutes": minutes, "config": net.config, "args": vars(args)}, ckpt)

    while minutes < args.minutes and (args.iters is None or step < args.iters):
        idx = torch.randint(len(clips), (args.batch,), generator=gen)
        batch = clips[idx].float() / 127.5 - 1
        flip = torch.rand(args.batch, generator=gen) < 0.5
        batch[flip] = batch[flip].flip(-1)
        lr = args.lr * min(1.0, (step + 1) / 200)
        loss, frames_loss = losses(net, prior, batch, gen, args)
        optimise(opt, net, ema, loss, lr, step, args.ema)
        step += 1
        seen.append(loss.item())
        seen_frames.append(frames_loss.item())
        minutes = minutes0 + (time.time() - t_start) / 60
        if step % 50 == 0:
            dt = (time.time() - t_log) / 50
            t_log = time.time()
            writer.writerow([step, round(minutes, 2), round(float(np.mean(seen)), 5),
                             round(float(np.mean(seen_frames)), 5), lr, round(dt, 4)])
            logf.flush()
            print(f"step {step} min {minutes:.1f} loss {np.mean(seen):.4f} (frames alone {np.mean(seen_frames):.4f}) "
                  f"{1 / dt:.2f} it/s", flush=True)
            seen, seen_frames = [], []
        if time.time() - t_ckpt > args.ckpt_minutes * 60:
            save()
            t_ckpt = time.time()
    save()
    logf.close()
    print(f"done at step {step} ({minutes:.1f} min); exporting", flush=True)
    export(out, args.export_dir)


if __name__ == "__main__":
    main()
