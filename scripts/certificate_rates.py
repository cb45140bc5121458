"""How often is a certified image right, and a right image certified? The certificate (``poegen.certify``) against
the checker, on the images of a `poegen eval shapes --out DIR` run.

For every row of the run it rebuilds the prompt's product as the run did, certifies the chosen image with the
product's own potentials, and prints per tier: the share of images certified, the precision (certified images the
checker finds exact) and the recall (exact images certified), at each probability of ``--taus`` for the scorer
questions (the footprint keeps ``defaults.CERTIFY_STRAY_PX``).

    poegen eval shapes --per-category 4 --seeds 2 --samplers poe --workers 1 --out runs/cert
    python scripts/certificate_rates.py runs/cert
"""
import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import torch

from poegen import defaults
from poegen.certificate import certify
from poegen.experts.shapes import load_prior, load_vlm
from poegen.job import Job
from poegen.pipeline import build, job_config
from poegen.specs import load_target


def verdicts(folder: Path):
    """(tier, exact, {potential: value}, {potential: threshold}) of every row of an eval --out folder."""
    rows = json.loads((folder / "rows.json").read_text())
    images = torch.load(folder / "images.pt")
    prior, vlm, products = load_prior(), load_vlm(), {}
    seeds = defaultdict(list)
    for r in rows:
        seeds[(r["sampler"], r["prompt"], r["particles"])].append(r["seed"])
    for r in rows:
        key = (r["sampler"], r["prompt"], r["particles"])
        image = images[f"{key[0]}|{key[1]}|{key[2]}"][sorted(seeds[key]).index(r["seed"])]
        if r["prompt"] not in products:
            job = Job()
            products[r["prompt"]] = build(load_target(r["prompt"], True), job, job_config(job), prior=prior, vlm=vlm)
        cert = certify(products[r["prompt"]], image[None].float(), decoded=True)
        yield (r.get("tier", "?"), bool(r["exact"]), dict(zip(cert.checked, cert.values[:, 0].tolist())),
               dict(zip(cert.checked, cert.thresholds)))


def certified(values: dict, thresholds: dict, tau: float) -> bool:
    """Every scorer question at P >= tau, every other potential at its own threshold."""
    return all(v >= (math.log(tau) if name.startswith("vlm[") else thresholds[name]) for name, v in values.items())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="`poegen eval shapes --out` folders")
    p.add_argument("--taus", default="0.5,0.8,0.9,0.95", help="probabilities of the scorer questions")
    args = p.parse_args()
    taus = [float(t) for t in args.taus.split(",")]
    got = [v for folder in args.folders for v in verdicts(Path(folder))]
    print(f"footprint: at most {defaults.CERTIFY_STRAY_PX:g} stray px; default tau {defaults.CERTIFY_P:g}")
    print(f"{'tiers':5s} {'tau':>5s} {'n':>4s} {'exact':>6s} {'certified':>9s} {'precision':>9s} {'recall':>7s}")
    for tiers in sorted({t for t, *_ in got}) + ["all"]:
        part = [g for g in got if tiers == "all" or g[0] == tiers]
        exact = [e for _, e, _, _ in part]
        for tau in taus:
            cert = [certified(v, th, tau) for _, _, v, th in part]
            both = sum(c and e for c, e in zip(cert, exact))
            precision = f"{both / sum(cert):.3f}" if any(cert) else "-"
            recall = f"{both / sum(exact):.3f}" if any(exact) else "-"
            print(f"{tiers:5s} {tau:5.2f} {len(part):4d} {sum(exact) / len(part):6.3f} {sum(cert) / len(part):9.3f} "
                  f"{precision:>9s} {recall:>7s}")
    unmet = defaultdict(int)  # which potentials fail most at the default, over images the checker finds wrong too
    for _, e, v, th in got:
        for name, value in v.items():
            if value < th[name]:
                unmet[("footprint" if not name.startswith("vlm[") else "question") + (" (exact)" if e else "")] += 1
    print("unmet at the default:", dict(unmet))


if __name__ == "__main__":
    main()
