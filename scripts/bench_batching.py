"""Shared-backbone batching benchmark on a tiny Stable-Diffusion-shaped model built from configs.

Prints batched_over_separate= (median wall time of evaluating 3 prompt experts that share one UNet,
batched into one call, over 3 separate calls) and vae_decodes_per_step= (VAE decodes per noise level
in a poe run whose potential reads pixels).
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import poegen
from poegen.experts.diffusers import TextConditionedUNetExpert, vae_decoder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the tiny models are test helpers
from helpers import tiny_sd_folder  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--particles", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = str(tiny_sd_folder(Path(tmp)))
        experts = [TextConditionedUNetExpert.from_pretrained(root, p) for p in ("", "a red ball", "a blue box")]
        decode = vae_decoder(root)
    for e in experts:
        e.unet.to(args.device)
    x, sigma = torch.randn(args.particles, 4, 8, 8, device=args.device), torch.tensor(1.0, device=args.device)

    def timed(fn):
        fn()
        out = []
        for _ in range(args.repeats):
            if args.device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if args.device == "cuda":
                torch.cuda.synchronize()
            out.append(time.perf_counter() - t)
        return statistics.median(out)

    separate = timed(lambda: [e.denoise(x, sigma) for e in experts])
    batched = timed(lambda: TextConditionedUNetExpert.denoise_batch(experts, x, sigma))
    print(f"separate_ms={1000 * separate:.2f} batched_ms={1000 * batched:.2f} ({args.particles} particles, "
          f"3 experts, {args.device}, medians of {args.repeats})")
    print(f"batched_over_separate={batched / separate:.3f}")

    decodes = []

    def counting_decode(z):
        decodes.append(1)
        return decode(z.cpu()).to(z.device)

    class Brightness:
        name = "brightness"

        def log_potential(self, images):
            return images.mean((1, 2, 3))

    steps = 4
    product = poegen.Product(experts, weights=[-1.0, 1.0, 1.0], potentials=[Brightness()], decode=counting_decode)
    poegen.sample(product, num_particles=4, num_steps=steps, device=args.device,
                  generator=torch.Generator(device=args.device).manual_seed(0))
    print(f"vae_decodes_per_step={(len(decodes) - 1) / steps:.2f} (level 0 adds one)")


if __name__ == "__main__":
    main()
