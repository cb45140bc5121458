"""Train the shapes-world yes/no scorer (poegen.experts.shapes.scorer) on balanced random questions.

Each batch holds pool scenes (colours permuted, maybe mirrored), two 'yes' and two 'no' questions per
image, the renderer's per-pixel labels (colour / shape / size / object density) as auxiliary targets,
and light noise / blur / colour-jitter augmentation so that generated images are scored well. With
--p-denoised, that share of a batch's images is the shapes prior's x0_hat of the render noised to a sigma drawn
log-uniformly in --denoised-sigmas (scenes without a morph), answered with the render's truth: what the engine scores at every level,
so that the answers there estimate the final image's (a learned twist) instead of misreading a blur.
Held-out accuracy is measured on freshly simulated scenes; the weights and VLM_CARD.md are written to
poegen/experts/shapes/weights/.

    python scripts/train_shapes_vlm.py --minutes 20
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from poegen.experts.shapes.model import load_prior  # noqa: E402
from poegen.experts.shapes.render import render  # noqa: E402
from poegen.experts.shapes.question_sampler import random_question  # noqa: E402
from poegen.experts.shapes.questions import encode_batch, parse_question  # noqa: E402
from poegen.experts.shapes.scorer import ShapesVLM, load_vlm, save_vlm  # noqa: E402
from poegen.experts.shapes.truth import answer_scene  # noqa: E402
from poegen.experts.shapes.shapeseval import TIERS, make  # noqa: E402
from poegen.experts.shapes.world import (COLOUR_NAMES, SHAPES, SIZE_NAMES, in_view, random_objects,  # noqa: E402
                                         random_scene, simulate)


def parse_args():
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/vlm",
                    help="weights and card go here; poegen/experts/shapes/weights replaces the shipped ones")
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--batch", type=int, default=32, help="images per batch (two yes and two no questions each)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--aux", type=float, default=1.0, help="weight of the renderer-supervised map losses")
    ap.add_argument("--pool", type=int, default=1500)
    ap.add_argument("--max-objects", type=int, default=6,
                    help="objects per training scene, at most (five or six: extras that count questions must see)")
    ap.add_argument("--placed", type=int, default=600, help="scenes laid out as prompts are placed (see placed_scene)")
    ap.add_argument("--p-placed", type=float, default=0.35, help="share of a batch's images drawn from them")
    ap.add_argument("--eval-scenes", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", default=None, help="folder with vlm.safetensors to continue training from")
    ap.add_argument("--p-denoised", type=float, default=0.0, help="share of images replaced by the prior's x0_hat")
    ap.add_argument("--denoised-sigmas", default="0.02,5", help="range of their noise levels (log-uniform)")
    return ap.parse_args()


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light noise, blur and colour jitter, per image."""
    n = x.shape[0]
    u = torch.rand(n, 4, generator=gen)
    blur = torch.tensor([1.0, 2.0, 1.0])
    k = (blur[:, None] * blur[None, :] / 16).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=3)
    x = torch.where((u[:, 0] < 0.3).view(-1, 1, 1, 1), blurred, x)
    scale = 1 + 0.1 * (torch.rand(n, 3, 1, 1, generator=gen) - 0.5) * (u[:, 1] < 0.3).view(-1, 1, 1, 1)
    shift = 0.1 * (torch.rand(n, 3, 1, 1, generator=gen) - 0.5) * (u[:, 1] < 0.3).view(-1, 1, 1, 1)
    x = x * scale + shift
    noise_std = 0.1 * u[:, 3].view(-1, 1, 1, 1) * (u[:, 2] < 0.5).view(-1, 1, 1, 1)
    return (x + noise_std * torch.randn(x.shape, generator=gen)).clamp(-1, 1)


def aux_targets(scene, masks: np.ndarray, morph: int | None = None):
    """Per-pixel labels from the renderer: colour (H,W; background = n_colours), shape, size (-100 = ignore),
    density (H,W) summing to one over each object, and the distractor's pixels (H,W bool), whose shape is
    pushed to uniform and which get no density (a morph is not an object of the vocabulary)."""
    total = masks.sum(0)
    owner = masks.argmax(0)
    fg = total >= 0.5
    colour = np.where(fg, np.array([COLOUR_NAMES.index(o.colour) for o in scene.objects])[owner], len(COLOUR_NAMES))
    shape = np.where(fg, np.array([SHAPES.index(o.shape) for o in scene.objects])[owner], -100)
    size = np.where(fg, np.array([SIZE_NAMES.index(o.size) for o in scene.objects])[owner], -100)
    counted = [k for k in range(len(masks)) if k != morph]
    density = (masks[counted] / np.maximum(masks[counted].sum((1, 2), keepdims=True), 1e-6)).sum(0)
    distractor = fg & (owner == morph) if morph is not None else np.zeros_like(fg)
    shape = np.where(distractor, -100, shape)
    return colour, shape, size, density, distractor


def distort(scene, rng, p_morph: float = 0.3, p_repeat: float = 0.3):
    """A training variant of a scene: colours permuted (or, with p_repeat, drawn with repeats), maybe mirrored,
    and with p_morph one object (of two or more) drawn as a morph between two shapes. Returns the scene,
    the morphs for `render`, the morph's index (or None) and the scene that questions are asked about
    (the morph matches no phrase, so it is left out)."""
    n = len(COLOUR_NAMES)
    perm = rng.integers(n, size=n) if rng.random() < p_repeat else rng.permutation(n)
    scene = scene.recoloured({c: COLOUR_NAMES[perm[i]] for i, c in enumerate(COLOUR_NAMES)})
    if rng.random() < 0.5:
        scene = scene.mirrored()
    if len(scene.objects) < 2 or rng.random() >= p_morph:
        return scene, None, None, scene
    k = int(rng.integers(len(scene.objects)))
    other = str(rng.choice([s for s in SHAPES if s != scene.objects[k].shape]))
    morph = (other, float(rng.uniform(0.4, 0.6)), "blend") if rng.random() < 0.6 else (other, 0.0, "split")
    return scene, {k: morph}, k, scene.subset([i for i in range(len(scene.objects)) if i != k])


def placed_scene(rng, p_extra: float = 0.5):
    """A scene laid out the way prompts are placed (a ShapesEval witness of a random category: objects side by
    side in equal floor slots, nearly touching, stacks straight up), with p_extra one more random object dropped
    over a random one: near misses of one object too many (five boxes for 'four boxes'), which the counts
    must tell from the asked scene."""
    tier = "AB"[int(rng.integers(2))]
    scene = make(tier, list(TIERS[tier])[int(rng.integers(len(TIERS[tier])))], rng).scene
    if rng.random() < p_extra:
        under = scene.objects[int(rng.integers(len(scene.objects)))]
        extra = replace(random_objects(rng, 1, distinct_colours=False)[0], x=under.x + float(rng.normal(0, 0.3)),
                        y=max(o.y for o in scene.objects) + 1.5)
        more = simulate(list(scene.objects) + [extra])
        if more.settled and all(in_view(o) for o in more.objects):
            scene = more
    return scene


def denoised(prior, x: torch.Tensor, sigma: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The prior's (unconditional) x0_hat of the images ``x`` noised to ``sigma`` (one per image)."""
    noisy = x + sigma.view(-1, 1, 1, 1) * torch.randn(x.shape, generator=gen)
    with torch.no_grad():
        return prior.denoise(noisy, sigma)


def some_denoised(prior, x: torch.Tensor, gen: torch.Generator, p: float, lo: float, hi: float,
                  allowed: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` with a share ``p`` of its images (among the ``allowed`` ones) replaced by their x0_hat at log-uniform
    sigmas in [lo, hi]."""
    pick = torch.rand(x.shape[0], generator=gen) < p
    pick = pick if allowed is None else pick & allowed
    if not bool(pick.any()):
        return x
    sigma = torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * torch.rand(int(pick.sum()), generator=gen))
    x = x.clone()
    x[pick] = denoised(prior, x[pick], sigma, gen)
    return x


def make_batch(pool, rng, batch: int, per_image: int = 2, placed=(), p_placed: float = 0.0):
    """Images (B,3,32,32), aux target tensors, questions (2*per_image per image), image index, labels; a share
    p_placed of the images from the ``placed`` scenes."""
    imgs, aux, qs, idx, ys = [], [], [], [], []
    while len(imgs) < batch:
        source = placed if placed and rng.random() < p_placed else pool
        scene, morphs, k, asked = distort(source[rng.integers(len(source))], rng)
        pairs = [(random_question(asked, rng, want), want) for want in (True, False) for _ in range(per_image)]
        pairs = [(q, y) for q, y in pairs if q is not None]
        img, masks = render(scene, morphs=morphs)
        for q, y in pairs:
            qs.append(q)
            ys.append(float(y))
            idx.append(len(imgs))
        imgs.append(torch.from_numpy(img))
        aux.append(aux_targets(scene, masks, k))
    colour, shape, size, density, distractor = (torch.from_numpy(np.stack(a)) for a in zip(*aux))
    return (torch.stack(imgs), (colour.long(), shape.long(), size.long(), density.float(), distractor), qs,
            torch.tensor(idx), torch.tensor(ys))


def aux_loss(maps, targets):
    """Cross-entropy on the attribute maps plus a density regression (renderer supervision)."""
    colour, shape, size, density, distractor = targets
    uniform = -(F.log_softmax(maps["shape"], 1).mean(1) * distractor).sum() / distractor.sum().clamp(min=1)
    return (F.cross_entropy(maps["colour"], colour) + F.cross_entropy(maps["shape"], shape, ignore_index=-100)
            + uniform + F.cross_entropy(maps["size"], size, ignore_index=-100)
            + ((maps["density"] - density) * 30).pow(2).mean())


@torch.no_grad()
def evaluate(net, scenes, rng, transform=None):
    """Accuracy overall and per question kind / answer on fresh scenes (``transform``: of the rendered images,
    e.g. augmented or denoised)."""
    imgs, qs, ys, kinds = [], [], [], []
    for scene in scenes:
        for want in (True, False):
            q = random_question(scene, rng, want)
            if q is None:
                continue
            imgs.append(torch.from_numpy(render(scene)[0]))
            qs.append(q)
            ys.append(want)
            kinds.append(parse_question(q).kind + (":" + parse_question(q).rel if parse_question(q).rel else ""))
    return _score(net, imgs, qs, ys, kinds, transform)


def evaluate_denoised(net, prior, scenes, sigmas=(0.1, 0.3, 1.0, 2.0)):
    """Held-out accuracy on the prior's x0_hat of noised renders, per sigma (the render's truth as the answer)."""
    gen = torch.Generator().manual_seed(5)
    return {s: evaluate(net, scenes, np.random.default_rng(5),
                        lambda x, s=s: denoised(prior, x, torch.full((x.shape[0],), s), gen)) for s in sigmas}


@torch.no_grad()
def evaluate_distractors(net, scenes, rng):
    """Accuracy of 'is there a <colour> <shape>' about a morph's colour and either of its two shapes (the
    answer is yes only when another object matches), on scenes of two or more objects with one morph."""
    imgs, qs, ys, kinds = [], [], [], []
    for scene in scenes:
        if len(scene.objects) < 2:
            continue
        scene, morphs, k, asked = distort(scene, rng, p_morph=1.0, p_repeat=0.0)
        img = torch.from_numpy(render(scene, morphs=morphs)[0])
        for shape in (scene.objects[k].shape, morphs[k][0]):
            q = f"is there a {scene.objects[k].colour} {shape}"
            imgs.append(img)
            qs.append(q)
            ys.append(answer_scene(q, asked))
            kinds.append(f"distractor:{morphs[k][2]}")
    return _score(net, imgs, qs, ys, kinds, None)


@torch.no_grad()
def _score(net, imgs, qs, ys, kinds, transform):
    """Accuracy of the net's yes/no answers, overall, per kind and per answer."""
    net.eval()
    hits, counts = collections.Counter(), collections.Counter()
    x = torch.stack(imgs)
    if transform is not None:
        x = transform(x)
    pred = torch.cat([net(x[i:i + 256], encode_batch(qs[i:i + 256])) > 0 for i in range(0, len(qs), 256)])
    for p, y, k in zip(pred.tolist(), ys, kinds):
        for key in ("all", k, "yes" if y else "no"):
            counts[key] += 1
            hits[key] += int(p == y)
    net.train()
    return {k: (hits[k] / counts[k], counts[k]) for k in sorted(counts)}


def main():
    """Train, evaluate, export, write the card."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    pool = [random_scene(rng, max_objects=args.max_objects) for _ in range(args.pool)]
    placed = [placed_scene(rng) for _ in range(args.placed)]
    print(f"pool of {len(pool)} scenes and {len(placed)} placed ones in {time.time() - t0:.0f} s", flush=True)
    net, before = ShapesVLM(), {}
    if args.init:
        net = load_vlm(args.init).net.train()
        before = json.loads((Path(args.init) / "vlm_config.json").read_text())
        print(f"continuing from {args.init}", flush=True)
    n_params = sum(p.numel() for p in net.parameters())
    prior = load_prior().null()
    lo, hi = (float(v) for v in args.denoised_sigmas.split(","))
    eval_rng = np.random.default_rng(10_000 + args.seed)  # fresh scenes, never in the pool
    scenes = [random_scene(eval_rng) for _ in range(args.eval_scenes)]
    if args.init:
        _show_denoised("before", evaluate_denoised(net, prior, scenes[:300]))
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    budget = args.minutes * 60
    t_start, step, losses, accs = time.time(), 0, [], []
    while time.time() - t_start < budget:
        pool.append(random_scene(rng, max_objects=args.max_objects))
        frac = (time.time() - t_start) / budget
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (step + 1) / 200) * 0.5 * (1 + math.cos(math.pi * frac))
        x, targets, qs, idx, y = make_batch(pool, rng, args.batch, placed=placed, p_placed=args.p_placed)
        # a morph is not denoised: the prior would turn it into one of its shapes, and its answers would be wrong
        x = some_denoised(prior, x, gen, args.p_denoised, lo, hi, allowed=~targets[4].flatten(1).any(1))
        maps = net.maps(augment(x, gen))
        logit = net(x, encode_batch(qs), idx, maps=maps)
        loss = F.binary_cross_entropy_with_logits(logit, y) + args.aux * aux_loss(maps, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        accs.append(((logit > 0).float() == y).float().mean().item())
        if step % 100 == 0:
            print(f"step {step} min {(time.time() - t_start) / 60:.1f} loss {np.mean(losses):.4f} "
                  f"train acc {np.mean(accs):.3f}", flush=True)
            losses, accs = [], []
    minutes = (time.time() - t_start) / 60
    clean = evaluate(net, scenes, np.random.default_rng(1))
    gen1 = torch.Generator().manual_seed(1)
    noisy = evaluate(net, scenes, np.random.default_rng(1), lambda x: augment(x, gen1))
    _show("clean", clean)
    _show("augmented", noisy)
    distract = evaluate_distractors(net, scenes, np.random.default_rng(2))
    _show("distractors", distract)
    crowded = [random_scene(eval_rng, n_objects=int(eval_rng.integers(5, 7))) for _ in range(args.eval_scenes // 4)]
    crowd = evaluate(net, [s for s in crowded if len(s.objects) >= 5], np.random.default_rng(3))
    _show("five or six objects", crowd)
    placed = evaluate(net, [placed_scene(eval_rng) for _ in range(args.eval_scenes // 4)], np.random.default_rng(4))
    _show("placed", placed)
    noised = evaluate_denoised(net, prior, scenes[:300])
    _show_denoised("after", noised)
    step += before.get("trained_steps", 0)
    minutes += before.get("trained_minutes", 0.0)
    path = save_vlm(net, args.out, extra={"trained_steps": step, "trained_minutes": round(minutes, 1),
                                          "heldout_accuracy": round(clean["all"][0], 4)})
    write_card(Path(args.out) / "VLM_CARD.md", n_params, step, minutes, args, clean, noisy, distract, crowd, placed,
               noised)
    print(f"saved {path}", flush=True)


def _show(label: str, accuracy: dict):
    """One held-out accuracy table (subset -> (accuracy, n)) as a line of JSON."""
    print(f"held-out accuracy ({label}):", json.dumps({k: round(v[0], 4) for k, v in accuracy.items()}), flush=True)


def _show_denoised(label: str, tables: dict):
    """Accuracy on denoised renders per sigma (overall and on count questions) as one line."""
    print(f"held-out accuracy on x0_hat ({label}):", json.dumps({s: [round(t["all"][0], 4), round(t["count"][0], 4)]
                                                                  for s, t in tables.items()}), flush=True)


def _rows(accuracy: dict) -> str:
    """A held-out accuracy table as markdown rows: subset, n, accuracy."""
    return "\n".join(f"| {k} | {n} | {a:.3f} |" for k, (a, n) in accuracy.items())


def write_card(path: Path, n_params, step, minutes, args, clean, noisy, distract, crowd, placed, noised):
    """Markdown model card with the held-out accuracy tables."""
    rows = "\n".join(f"| {k} | {clean[k][1]} | {clean[k][0]:.3f} | {noisy[k][0]:.3f} |" for k in clean)
    drows, crows, prows = (_rows(table) for table in (distract, crowd, placed))
    nrows = "\n".join(f"| {s} | {t['all'][1]} | {t['all'][0]:.3f} | {t['count'][0]:.3f} |" for s, t in noised.items())
    path.write_text(f"""# Shapes-world VLM (yes/no scorer)

A small modular scorer ({n_params:,} parameters) that returns log P(yes | image, question) for 32x32
shapes-world images; used as a discriminative expert (`ShapesVLMExpert.log_potential`). The question is
parsed with the world's fixed grammar into structured ids; a dilated CNN gives per-pixel colour / shape /
size / object-density maps (supervised by the renderer's masks during training), each phrase becomes a
soft mask, and an MLP answers from the masks' soft counts and a small relation CNN run on the two masks.

- Training: {step} steps in all of {args.batch} images x 4 questions (two yes, two no) + map losses (weight
  {args.aux}), {minutes:.0f} minutes on one CPU thread, AdamW with cosine decay (lr {args.lr} in the last run);
  scenes of 1 to {args.max_objects} objects simulated with pybullet, colours permuted (with p 0.3 drawn with repeats) and mirrored;
  augmentation: 3x3 blur (p 0.3), colour jitter (p 0.3), Gaussian noise std up to 0.1 (p 0.5); a share
  {args.p_denoised} of the images (in the last run) replaced by the shapes prior's x0_hat of the render noised to a sigma
  log-uniform in [{args.denoised_sigmas}], with the render's answers.
- Distractors: in 30% of the scenes of two or more objects, one object is drawn as a morph between its
  shape and another (the two outlines' distance functions blended at 0.4-0.6, or one shape's upper half on
  the other's lower half). A morph matches no phrase: questions are answered as if it were absent, its
  pixels' shape map is pushed to uniform and it gets no object density, so that half-formed shapes in
  generated images are less often taken for either shape (distractor accuracy below).
- Questions: `is there a [size] [colour] shape`, `is the <phrase> left of|right of|on|above|below the
  <phrase>`, `are there <zero..four> <balls|boxes|wedges>`. 'on' is the physics contact relation; left/right
  need a 0.3 world-unit gap, above/below 0.5 (training questions avoid pairs within 0.25 of those margins).
- Held-out evaluation: {args.eval_scenes} freshly simulated scenes (a seed never used in training), one yes and
  one no question each.

| subset | n | accuracy (clean) | accuracy (augmented) |
|---|---|---|---|
{rows}

Distractor accuracy: the same scenes (two or more objects) with one morph, asked "is there a <its colour>
<either of its two shapes>?" (yes only when another object matches):

| subset | n | accuracy |
|---|---|---|
{drows}

Crowded scenes: {len(crowd) and crowd["all"][1]} questions (one yes, one no) on fresh scenes of five or six objects (training
scenes have up to {args.max_objects}), where an extra object must turn "are there four boxes" to no:

| subset | n | accuracy |
|---|---|---|
{crows}

Placed scenes: fresh scenes laid out as prompts are placed (ShapesEval witnesses, objects side by side in
equal slots), half with one extra object dropped on them (`placed_scene`; {args.p_placed:.0%} of training
images came from {args.placed} such scenes):

| subset | n | accuracy |
|---|---|---|
{prows}

Denoised renders: the first 300 held-out scenes noised to sigma and denoised by the shapes prior
(unconditional x0_hat, what the engine scores at that level), answered with the render's truth:

| sigma | n | accuracy | count questions |
|---|---|---|---|
{nrows}

Limitations: trained on rendered scenes and the prior's x0_hat of them; generated images far from the renderer's style or more
than six objects are out of distribution, and a morph close to one of its shapes is ambiguous.
""")


if __name__ == "__main__":
    main()
