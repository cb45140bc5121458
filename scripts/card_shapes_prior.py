"""Write the shapes prior's model card (PRIOR_CARD.md), loss curve and sample grid next to its weights.

    python scripts/card_shapes_prior.py --log runs/prior/loss.csv
"""
import argparse
import csv
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from poegen.experts.shapes.model import WEIGHTS_DIR, count_parameters, load_prior  # noqa: E402
from poegen.experts.shapes.render import grid  # noqa: E402

from sample_shapes_prior import sample_phrases  # noqa: E402

PHRASES = ["red ball", "blue box", "green wedge", "yellow ball", "magenta box", "cyan wedge"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log", default="runs/prior/loss.csv", help="loss.csv written by train_shapes_prior.py")
    ap.add_argument("--n", type=int, default=16, help="samples per phrase for the checker rates")
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(1)
    prior = load_prior()
    cfg = prior.config
    rows = list(csv.DictReader(open(args.log))) if Path(args.log).exists() else []
    if rows:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot([float(r["step"]) for r in rows], [float(r["loss"]) for r in rows])
        ax.set_xlabel("iteration"), ax.set_ylabel("EDM loss (mean of 100 its)"), ax.set_yscale("log")
        fig.tight_layout()
        fig.savefig(WEIGHTS_DIR / "prior_loss.png", dpi=80)
    rates, t = {}, time.time()
    for w in (1.0, 3.0):
        images, hits = sample_phrases(prior, PHRASES, args.n, args.steps, w, seed=0)
        rates[w] = hits
        if w == 3.0:
            Image.fromarray(grid(images[:: max(1, args.n // 8)], ncol=8)).save(WEIGHTS_DIR / "prior_samples.png")
    table = "\n".join(f"| {p} | {rates[1.0][p]}/{args.n} | {rates[3.0][p]}/{args.n} |" for p in PHRASES)
    card = f"""# Shapes-world prior (generative expert)

A conditional diffusion model p(image | one object phrase, optional 2-D position) on 32x32 shapes-world
images, {count_parameters(prior.net):,} parameters (the architecture of a diffusers UNet2DModel, channels {cfg['block_out_channels']},
class embedding = colour + shape + size embeddings, position as a Gaussian-blob input channel), trained in
the VE/EDM form (sigma {cfg['sigma_min']}..{cfg['sigma_max']}, sigma_data {cfg['sigma_data']}) so it is a
`denoise(x, sigma)` expert as it stands. Conditioning dropout makes the same network the unconditional prior.

- Data: random scenes of 1 to 4 objects simulated with pybullet and rendered on the fly by the project's
  rasteriser; colours permuted and scenes mirrored; the phrase names one object of the scene (its size
  dropped 30% of the time, the whole phrase 15%), its centroid given 60% of the time.
- Training: {cfg.get('trained_iters', '?')} iterations of batch {cfg.get('batch', '?')}, {cfg.get('trained_minutes', '?')} minutes on one CPU
  thread (`scripts/train_shapes_prior.py`), Adam 3e-4, EMA 0.999; weights stored in fp16.
- Loss curve: `prior_loss.png`. Samples at guidance 3 (rows: {', '.join(PHRASES)}): `prior_samples.png`.

Checker hit rate (the phrase's colour and shape found in the sample), ancestral sampler, {args.steps} steps,
{args.n} samples per phrase, seed 0:

| phrase | guidance 1 | guidance 3 |
|---|---|---|
{table}

Limitations: trained on a CPU only; the loss was still falling slowly. Binding a colour to its shape is the
weakest part (a phrase's colour sometimes lands on another object), and colours bleed between touching objects.
"""
    (WEIGHTS_DIR / "PRIOR_CARD.md").write_text(card)
    print(f"wrote {WEIGHTS_DIR / 'PRIOR_CARD.md'} in {time.time() - t:.0f} s")


if __name__ == "__main__":
    main()
