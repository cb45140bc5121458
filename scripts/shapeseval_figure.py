"""Four tier B prompts of a ShapesEval run (``poegen eval shapes --out DIR``) with poe's and best-of-n's image side by
side, for the README: prompts where poe is exact and best-of-n is not come first, then any poe exact.

    python scripts/shapeseval_figure.py runs/shapeseval docs/shapeseval_tierb.png
"""
import argparse
import json
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from poegen.experts.shapes.render import to_uint8


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="the folder `poegen eval shapes --out` wrote")
    ap.add_argument("out", help="PNG to write")
    ap.add_argument("--scale", type=int, default=4)
    args = ap.parse_args()
    rows = json.loads((Path(args.run) / "rows.json").read_text())
    images = torch.load(Path(args.run) / "images.pt")
    by = {(r["sampler"], r["prompt"], r["seed"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    picks, used = [], set()
    for want_miss in (True, False):  # poe exact where best-of-n missed first
        for r in rows:
            other = by.get(("best-of-n", r["prompt"], r["seed"]))
            if (r["sampler"] == "poe" and r["tier"] == "B" and r["exact"] and other is not None
                    and (not other["exact"]) == want_miss and r["category"] not in used and len(picks) < 4):
                picks.append(r)
                used.add(r["category"])
    size, text_w, pad = 32 * args.scale, 330, 6
    fig = Image.new("RGB", (text_w + 2 * (size + pad) + pad, 24 + len(picks) * (size + pad)), "white")
    draw = ImageDraw.Draw(fig)
    draw.text((text_w + pad, 6), "poe", fill="black")
    draw.text((text_w + 2 * pad + size, 6), "best-of-n", fill="black")
    for k, r in enumerate(picks):
        y = 24 + k * (size + pad)
        i = seeds.index(r["seed"])
        words, line, lines = r["prompt"].split(), "", []
        for w in words:  # wrap the prompt at about 45 characters
            if len(line) + len(w) > 45:
                lines.append(line)
                line = ""
            line = f"{line} {w}".strip()
        lines.append(line)
        verdict = "exact" if by[("best-of-n", r["prompt"], r["seed"])]["exact"] else "best-of-n: not exact"
        draw.multiline_text((pad, y + 8), "\n".join(lines + [f"({r['category']}, seed {r['seed']}; {verdict})"]),
                            fill="black")
        for j, sampler in enumerate(("poe", "best-of-n")):
            key = next(kk for kk in images if kk.startswith(f"{sampler}|{r['prompt']}|"))
            tile = Image.fromarray(to_uint8(images[key][i])).resize((size, size), Image.NEAREST)
            fig.paste(tile, (text_w + pad + j * (size + pad), y))
    fig.save(args.out)
    print(f"figure={args.out} prompts={len(picks)}")


if __name__ == "__main__":
    main()
