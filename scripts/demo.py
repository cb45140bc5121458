"""Sample a product of two 2-D Gaussian mixtures with the PoE sampler and plot it against the exact target."""
import argparse
import logging

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import poegen  # noqa: E402
from poegen.experts.analytic import GaussianMixture, mixture_product  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="demo.png")
    ap.add_argument("--sampler", default="poe", choices=poegen.samplers.available())
    ap.add_argument("--particles", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    eye = torch.eye(2, dtype=torch.float64)
    ring = GaussianMixture([0.25] * 4, [[-2, 0], [2, 0], [0, 2], [0, -2]], torch.stack([0.3 * eye] * 4), name="ring")
    stripe = GaussianMixture([0.7, 0.3], [[-1.5, 0.5], [1.5, -0.5]], torch.stack([torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64)),
                                                                                  torch.diag(torch.tensor([0.5, 4.0], dtype=torch.float64))]), name="stripes")
    product = poegen.Product([ring, stripe])
    exact, log_Z = mixture_product(ring, stripe)
    runs = {name: poegen.sample(product, sampler=name, num_particles=args.particles, num_steps=args.steps,
                                generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64)
            for name in (args.sampler, "ancestral")}
    grid = torch.linspace(-4, 4, 200, dtype=torch.float64)
    X, Y = torch.meshgrid(grid, grid, indexing="xy")
    dens = exact.log_density(torch.stack([X.flatten(), Y.flatten()], 1), torch.zeros(())).exp().reshape(X.shape)
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 5))
    for ax, (name, r) in zip(axes, runs.items()):
        ax.contour(X, Y, dens, levels=8, cmap="Greys")
        w = torch.softmax(r.log_w, 0)
        idx = torch.multinomial(w, min(600, len(w)), replacement=True, generator=torch.Generator().manual_seed(1))
        ax.scatter(r.x[idx, 0], r.x[idx, 1], s=4, alpha=0.5, color="tab:red" if name == "ancestral" else "tab:blue")
        title = f"{name}: log Z = {r.log_Z:.3f}" if name != "ancestral" else "ancestral (composed, unweighted)"
        ax.set_title(f"{title}\nexact log Z = {float(log_Z):.3f}")
        ax.set_xlim(-4, 4), ax.set_ylim(-4, 4), ax.set_aspect("equal")
    fig.suptitle("product of a 4-mode ring and a 2-mode stripe mixture: samples against the exact product (contours)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
