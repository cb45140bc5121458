"""Evaluate the shapes world in motion (the video prior, each object's phrase at its simulated centroids): poe
against best-of-n at equal NFE on motion prompts, through ``poegen.compare.run`` with ``frames`` (as ``poegen compare --frames``).

Per prompt and sampler, for --seeds seeds, prints per frame the mean foreground IoU of the chosen clip against the
simulation's masks (``poegen.compare.judge_clip``), the mean IoU over frames and the share of exact frames (the
checker finds exactly the objects in view at that frame and nothing else); with --out, the tables and an HTML
report with the clips as GIFs.

    python scripts/eval_video.py --seeds 2 --particles 4 --steps 10
"""
import argparse
import statistics
from pathlib import Path

from poegen import compare, report

PROMPTS = ("a red ball rolls off a blue box", "a small green ball rolls off a large yellow box",
           "a small blue box slides off a large red box")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", default=",".join(PROMPTS[:2]), help="comma-separated motion prompts")
    ap.add_argument("--samplers", default="poe,best-of-n")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--particles", type=int, default=4)
    ap.add_argument("--mcmc-steps", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--workers", type=int, default=1, help="processes sharing the runs (results do not change)")
    ap.add_argument("--region", type=float, default=None,
                    help="regional composition's window std in pixels (default 0: off; the images' is 5)")
    ap.add_argument("--no-video-prior", action="store_true",
                    help="independent frames (the image prior per frame) instead of the shapes video prior as the base")
    ap.add_argument("--out", default=None, help="write the tables and report.html (clips as GIFs) to this folder")
    args = ap.parse_args()
    prompts = args.prompts.split(",")
    options = {} if args.region is None else {"region": args.region}
    if args.no_video_prior:
        options["video_prior"] = False
    rows, images = compare.run(prompts, args.samplers.split(","), args.seeds, args.particles, args.mcmc_steps,
                               args.steps, workers=args.workers, frames=args.frames, shapes_options=options)
    for prompt in prompts:
        for sampler in args.samplers.split(","):
            rs = [r for r in rows if r.prompt == prompt and r.sampler == sampler]
            iou = [statistics.mean(r.metrics[f"iou_f{f:02d}"] for r in rs) for f in range(args.frames)]
            print(f"{prompt!r} {sampler:10s} NFE {rs[0].nfe:5d}  IoU per frame " + " ".join(f"{v:.2f}" for v in iou)
                  + f"  mean {statistics.mean(iou):.3f}  exact frames "
                  + f"{statistics.mean(r.metrics['exact_frames'] for r in rs):.3f}", flush=True)
    if args.out:
        print("wrote", report.write(Path(args.out), rows, images, report.summarise(rows, images)))


if __name__ == "__main__":
    main()
