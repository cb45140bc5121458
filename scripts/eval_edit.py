"""Editing in the shapes world: objects dropped by pybullet into rendered scenes, judged by the checker.

Eight cases, each a rendered scene (the objects already in the image, at rest) and one new object that
pybullet drops onto or beside them. Every sampler edits each case with --samples seeds at equal NFE (poe
at the default budget of `poegen edit`). Prints, per sampler, `edit_bg_mse=` (mean squared difference to the
given image outside the edit mask, [-1, 1] scale; its median in brackets) and `edit_placed=` (the share of
samples whose new object is present within 2 px of its simulated place and whose old objects are all read at
their places). --variants compares the KnownPixels potential alone with the replacement of the kept pixels.

    python scripts/eval_edit.py --workers 2
"""
import argparse
import statistics
import tempfile
from pathlib import Path

import yaml

from poegen import compare

# (name, objects already in the image (shape, colour, size, x, y), the new object (shape, colour, size, x, y))
CASES = [
    ("ball_onto_box", [("box", "blue", "large", 0.0, 1.0)], ("ball", "red", "small", 0.05, 3.5)),
    ("box_onto_box", [("box", "green", "large", -1.0, 1.0)], ("box", "yellow", "small", -1.0, 3.6)),
    ("ball_beside_wedge", [("wedge", "magenta", "large", -0.8, 0.8)], ("ball", "cyan", "small", 1.6, 2.0)),
    ("ball_between_boxes", [("box", "red", "small", -1.8, 0.6), ("box", "blue", "small", 1.8, 0.6)],
     ("ball", "yellow", "small", 0.0, 2.0)),
    ("wedge_onto_box", [("box", "cyan", "large", 0.8, 1.0)], ("wedge", "red", "small", 0.8, 3.6)),
    ("ball_onto_stack", [("box", "blue", "large", -1.0, 1.0), ("box", "green", "small", -1.0, 2.6)],
     ("ball", "red", "small", -1.0, 4.5)),
    ("box_beside_ball", [("ball", "yellow", "large", 1.5, 1.0)], ("box", "magenta", "small", -1.0, 2.0)),
    ("box_between_balls", [("ball", "red", "small", -1.5, 0.6), ("ball", "green", "small", 1.5, 0.6)],
     ("box", "blue", "small", 0.0, 2.0)),
]


def write_cases(folder: Path):
    """One edit spec per case (the image of the old objects, and the scene with the new one) in ``folder``."""
    from poegen.experts.shapes import render
    from poegen.experts.shapes.world import Scene
    from poegen.pipeline import to_pil
    from poegen.scene import parse_scene, world_objects

    paths = []
    for name, old, (shape, colour, size, x, y) in CASES:
        objects = [{"name": f"{c} {s}", "shape": s, "colour": c, "size": z, "position": [px, py]}
                   for s, c, z, px, py in old]
        new = {"name": f"new {colour} {shape}", "shape": shape, "colour": colour, "size": size, "position": [x, y],
               "new": True}
        image, _ = render(Scene(tuple(world_objects(parse_scene({"objects": objects})))), 32)
        to_pil(image).save(folder / f"{name}.png")
        spec = {"image": f"{name}.png", "prompt": f"a {size} {colour} {shape}",
                "scene": {"objects": objects + [new], "physics": {"duration": 3.0}}}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        paths.append(str(folder / f"{name}.yaml"))
    return paths


def figure(targets, images, sampler: str, particles: int, out: str):
    """Two rows: the given images, and the sampler's first edit of each."""
    import torch
    from PIL import Image

    from poegen.edit import load_image
    from poegen.experts.shapes.render import grid

    before = [load_image(Path(t).with_suffix(".png")) for t in targets]
    after = [images[sampler, t, particles][0] for t in targets]
    Image.fromarray(grid(torch.stack(before + after), ncol=len(targets), scale=4)).save(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seed0", type=int, default=0)
    ap.add_argument("--samplers", default="poe,best-of-n,ancestral")
    ap.add_argument("--particles", type=int, default=16)
    ap.add_argument("--mcmc-steps", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--variants", default="replace", help="potential (KnownPixels weights only), replace (the kept "
                                                          "pixels replaced at every level), or both, comma-separated")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--cases", default=None, help="a folder to write the case files to (default: a temporary one)")
    ap.add_argument("--figure", default=None, help="write a before/after grid (the first seed of the first sampler)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.cases or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        targets = write_cases(folder)
        for variant in args.variants.split(","):
            options = {"replace_known": variant == "replace"}
            rows, images = compare.run(targets, args.samplers.split(","), args.samples, args.particles,
                                       args.mcmc_steps, args.steps, workers=args.workers, seed0=args.seed0,
                                       options=options)
            if args.figure:
                figure(targets, images, args.samplers.split(",")[0], args.particles, args.figure)
            print(f"{'case':20s} {'sampler':10s} placed  bg_mse   s/sample")
            for target in targets:
                for sampler in args.samplers.split(","):
                    rs = [r for r in rows if r.prompt == target and r.sampler == sampler]
                    print(f"{Path(target).stem:20s} {sampler:10s} {sum(r.relation for r in rs) / len(rs):6.2f} "
                          f"{statistics.mean(r.metrics['bg_mse'] for r in rs):8.1e} "
                          f"{statistics.median(r.seconds for r in rs):8.1f}")
            for sampler in args.samplers.split(","):
                rs = [r for r in rows if r.sampler == sampler]
                mse = [r.metrics["bg_mse"] for r in rs]
                print(f"variant={variant} {sampler} edit_bg_mse={statistics.mean(mse):.2e} "
                      f"(median {statistics.median(mse):.2e}) edit_placed={sum(r.relation for r in rs) / len(rs):.3f} "
                      f"(n={len(rs)}) nfe={statistics.mean(r.nfe for r in rs):.0f}", flush=True)


if __name__ == "__main__":
    main()
