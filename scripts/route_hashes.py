"""Pixel hashes of the README's shapes-world examples at fixed seeds, so that a restructuring can show its outputs
are bit-identical: run it before and after, and compare.

    python scripts/route_hashes.py --out hashes.txt          # about 2 minutes on 2 cores
    python scripts/route_hashes.py --check hashes.txt        # exits 1 when any image differs

Each example runs as `poegen ...` in one process with --threads 1 (float results differ in the last bits between
thread counts); a line is the example, then the sha256 of each written image's pixels (metadata left out).
"""
import argparse
import hashlib
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

EXAMPLES = [
    'generate "a red ball and a blue box" --out out.png',
    'generate "a green wedge left of a yellow ball" --sampler smc --particles 16 --steps 30 --seed 1 --out o.png',
    'generate "a red ball on a blue box" --out demo.png',
    "generate --scene examples/stacking.yaml --out stack.png",
    "generate --scene examples/roll_off.yaml --frames 3 --out roll.png",
    "generate --layout examples/layout_two_objects.yaml --out lay.png",
    "edit examples/edits/box.png --scene examples/edits/drop_ball.yaml --out edited.png",
    'generate "a green wedge left of a yellow ball" --vlm-weight 3 --out w.png',
    'generate "a red ball rolls off a blue box" --video roll.gif',
]
# the Python API on the layout example, with one thread set by the caller
API = ("import torch, poegen, sys; torch.set_num_threads(1); "
       "product = poegen.build_product(poegen.load_layout('examples/layout_two_objects.yaml')); "
       "result = poegen.sample(product, num_particles=4, num_steps=12, generator=torch.Generator().manual_seed(0)); "
       "poegen.decode_images(product, result)[0].save(sys.argv[1])")


def pixels_sha(path: Path) -> str:
    from PIL import Image
    h = hashlib.sha256()
    with Image.open(path) as im:
        for k in range(getattr(im, "n_frames", 1)):  # every frame of a GIF
            im.seek(k)
            h.update(im.convert("RGB").tobytes())
    return h.hexdigest()[:16]


def run(example: str, root: Path) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        args = [a if not a.endswith((".png", ".gif")) or a.startswith("examples/") else str(Path(tmp) / a)
                for a in shlex.split(example)]
        cmd = ([sys.executable, "-c", API, str(Path(tmp) / "api.png")] if example == "api" else
               [sys.executable, "-m", "poegen", *args, "-q", "--threads", "1"])
        subprocess.run(cmd, check=True, cwd=root, stdout=subprocess.DEVNULL)
        written = sorted(p for p in Path(tmp).iterdir() if p.suffix in (".png", ".gif"))
        return " ".join(f"{p.name}={pixels_sha(p)}" for p in written)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write the hashes here")
    ap.add_argument("--check", help="compare with the hashes in this file")
    args = ap.parse_args()
    root = Path(__file__).resolve().parent.parent
    lines = [f"{ex} :: {run(ex, root)}" for ex in EXAMPLES + ["api"]]
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    if args.check:
        want = Path(args.check).read_text().splitlines()
        bad = [f"{a}\n   was {b}" for a, b in zip(lines, want) if a != b]
        print(f"identical={len(lines) - len(bad)}/{len(lines)}")
        if bad:
            print("\n".join(bad))
            sys.exit(1)


if __name__ == "__main__":
    main()
