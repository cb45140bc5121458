"""Engine benchmark: loop overhead over bare denoiser calls, and exactness on a Gaussian product.

Prints overhead_ratio= (poe without MCMC, 64 particles, 50 steps, over the bare loop of the same
number of calls to the same fixed-cost conv denoiser; medians of --repeats interleaved runs),
mean_err_se= and logZ_err= (poe, 2000 particles, product of two 16-D Gaussians).
"""
import argparse
import statistics
import time

import torch
from torch import nn

import poegen
from poegen.experts.analytic import Gaussian, gaussian_product


class ConvDenoiser:
    """A fixed-cost synthetic denoiser: a 6-layer 64-channel conv stack on 3x32x32 images."""

    name, shape = "conv", (3, 32, 32)

    def __init__(self):
        torch.manual_seed(0)
        layers = [nn.Conv2d(3, 64, 3, padding=1), nn.SiLU()]
        for _ in range(4):
            layers += [nn.Conv2d(64, 64, 3, padding=1), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Conv2d(64, 3, 3, padding=1)).eval()

    @torch.no_grad()
    def denoise(self, x, sigma):
        c_in = 1 / (1 + sigma ** 2).sqrt()
        return x - sigma * 0.01 * self.net(x * c_in)


def bench_overhead(particles, steps, repeats):
    expert = ConvDenoiser()
    product = poegen.Product([expert])
    calls = steps + 1  # level 0 plus one per level, no MCMC

    def bare():
        x = torch.randn(particles, *expert.shape)
        s = torch.tensor(1.0)
        for _ in range(calls):
            x = expert.denoise(x, s)

    def engine():
        poegen.sample(product, sampler="poe", mcmc_steps=0, num_particles=particles, num_steps=steps,
                      generator=torch.Generator().manual_seed(0))

    bare(), engine()  # warm up
    times = {"bare": [], "engine": []}
    for _ in range(repeats):
        for name, fn in (("bare", bare), ("engine", engine)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return statistics.median(times["engine"]), statistics.median(times["bare"])


def bench_exact(d=16, particles=2000, steps=50):
    g = torch.Generator().manual_seed(0)
    make = lambda j: (torch.randn(d, generator=g, dtype=torch.float64),  # noqa: E731
                      (lambda A: A @ A.T / d + j * torch.eye(d, dtype=torch.float64))(torch.randn(d, d, generator=g, dtype=torch.float64)))
    (m1, C1), (m2, C2) = make(0.5), make(0.3)
    mean, cov, log_Z = gaussian_product(m1, C1, m2, C2)
    r = poegen.sample(poegen.Product([Gaussian(m1, C1), Gaussian(m2, C2)]), sampler="poe", num_particles=particles,
                      num_steps=steps, generator=torch.Generator().manual_seed(0), dtype=torch.float64, step_scale=0.3)
    w = torch.softmax(r.log_w, 0)
    ess = float(1 / (w ** 2).sum())
    mu = (w[:, None] * r.x).sum(0)
    return float(((mu - mean).abs() / (torch.diag(cov) / ess).sqrt()).max()), abs(r.log_Z - float(log_Z))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--particles", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t_engine, t_bare = bench_overhead(args.particles, args.steps, args.repeats)
    print(f"engine_s={t_engine:.3f} bare_s={t_bare:.3f} (medians of {args.repeats}, {args.particles} particles, "
          f"{args.steps} steps, {torch.get_num_threads()} threads)")
    print(f"overhead_ratio={t_engine / t_bare:.3f}")
    err_se, logz_err = bench_exact()
    print(f"mean_err_se={err_se:.2f}")
    print(f"logZ_err={logz_err:.3f}")


if __name__ == "__main__":
    main()
