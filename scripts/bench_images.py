"""What `--images K` costs: on ShapesEval's tier A held-out prompts (prompt set 0), the NFE per expert of K certified
images against one (the default anytime rounds, same seed), whether every pick is certified, whether the picks
look different (``anytime.distinct``) and whether the checker finds each exact.

    python scripts/bench_images.py              # 12 prompts x 2 seeds, about 5 minutes on 2 cores
    python scripts/bench_images.py --k 3 --per-category 1

Prints one line per run and then the mean and median of NFE(K) / NFE(1), the share of runs whose K picks are all
certified, and the share whose picks are pairwise visibly different."""
import argparse
import statistics

import torch

from poegen import anytime, compare
from poegen.envinfo import cpu_model
from poegen.experts.shapes import shapeseval


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--per-category", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    compare._init_worker(0)
    ratios, certified, distinct = [], [], []
    print(f"cpu={cpu_model()!r} k={args.k}")
    for it in shapeseval.items("A", args.per_category, 0):
        product, _, verdict = compare._target(it.prompt, None, None)
        for seed in range(args.seeds):
            one = anytime.sample(product, generator=torch.Generator().manual_seed(seed))
            k = anytime.sample(product, generator=torch.Generator().manual_seed(seed), images=args.k)
            n1, nk = (max(o.nfe[e] for e in product.names) for o in (one, k))
            ratios.append(nk / n1)
            certified.append(all(k.certified) and len(k.certified) == args.k)
            distinct.append(all(anytime.distinct(k.images[i], k.images[j]) for i in range(len(k.images))
                                for j in range(i)))
            print(f"{it.prompt!r} seed {seed}: NFE {n1} -> {nk} rounds {k.rounds} certified {k.certified} "
                  f"distinct {distinct[-1]} exact {[bool(verdict(x.float())['exact']) for x in k.images]}", flush=True)
    print(f"nfe_k_over_1_mean={statistics.mean(ratios):.2f} nfe_k_over_1_median={statistics.median(ratios):.2f} "
          f"all_certified={sum(certified) / len(certified):.2f} distinct={sum(distinct) / len(distinct):.2f} "
          f"n={len(ratios)}")


if __name__ == "__main__":
    main()
