"""Evaluate the shapes world in motion (the image prior per frame at simulated centroids): poe against best-of-n at
equal NFE (poegen.compare.equal_nfe_options) on motion prompts.

Per prompt and sampler, for --seeds seeds, prints per frame the mean foreground IoU of the chosen clip against the
simulation's masks (poegen.experts.motion.foreground_iou) and the share of clips whose frame is exact (the checker
finds exactly the objects in view at that frame and nothing else: checker.exactly), then the means over frames.

    python scripts/eval_video.py --seeds 2 --particles 4 --steps 10
"""
import argparse
import statistics

import torch

from poegen.compare import sample_one
from poegen.experts.motion import foreground_iou, trajectory
from poegen.experts.shapes.checker import exactly
from poegen.experts.shapes.vocab import parse_phrase
from poegen.families import build_product
from poegen.specs import from_prompt, motion_scene

PROMPTS = ("a red ball rolls off a blue box", "a small green ball rolls off a large yellow box",
           "a small blue box slides off a large red box")


def evaluate(product, traj, phrases, sampler: str, seed: int, particles: int, mcmc_steps: int, steps: int):
    """(per-frame IoU list, per-frame exact list, NFE) of one clip of a motion prompt's ``product``, judged against
    its simulated trajectory ``traj`` (objects ``phrases``)."""
    result = sample_one(product, sampler, particles, mcmc_steps, steps, seed)
    clip = result.x[:1].float()
    iou = foreground_iou(clip, traj)[0].tolist()
    exact = [exactly(clip[0, :, f], [p for p, v in zip(phrases, traj.visible[f].tolist()) if v])
             for f in range(clip.shape[2])]
    return iou, exact, sum(v for k, v in result.nfe.items() if k.startswith("shapes-clip[null"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", default=",".join(PROMPTS[:2]), help="comma-separated motion prompts")
    ap.add_argument("--samplers", default="poe,best-of-n")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--particles", type=int, default=4)
    ap.add_argument("--mcmc-steps", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    for prompt in args.prompts.split(","):
        product = build_product(from_prompt(prompt), video=True, frames=args.frames)  # once per prompt
        spec = motion_scene(prompt)
        traj = trajectory(spec, args.frames, product.fps, product.shape[-1])
        phrases = [parse_phrase(f"{o.size} {o.colour} {o.shape}") for o in spec.objects]
        for sampler in args.samplers.split(","):
            runs = [evaluate(product, traj, phrases, sampler, s, args.particles, args.mcmc_steps, args.steps)
                    for s in range(args.seeds)]
            iou = [statistics.mean(r[0][f] for r in runs) for f in range(args.frames)]
            exact = [statistics.mean(r[1][f] for r in runs) for f in range(args.frames)]
            print(f"{prompt!r} {sampler:10s} NFE/expert {runs[0][2]:5d}  IoU per frame "
                  + " ".join(f"{v:.2f}" for v in iou) + f"  mean {statistics.mean(iou):.3f}  exact per frame "
                  + " ".join(f"{v:.2f}" for v in exact) + f"  mean {statistics.mean(exact):.3f}", flush=True)


if __name__ == "__main__":
    main()
