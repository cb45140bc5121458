"""ShapesEval: its prompts are physically possible (simulated witnesses), its checker agrees with the simulation's
truth on 100+ scenes and 100+ near misses, and its statistics match closed forms."""
import math

import numpy as np
import pytest
import torch

from poegen import compare
from poegen.experts.shapes import shapeseval
from poegen.experts.shapes.prompt import Prompt, parse_prompt
from poegen.experts.shapes.render import render
from poegen.report import paired_bootstrap


@pytest.fixture(scope="module")
def validation_items():
    return shapeseval.items("AB", per_category=9, seed=5)  # 108 prompts over the 12 categories


def test_checker_agrees_with_the_simulation_on_scenes_and_near_misses(validation_items):
    """Issue 25's validation: on simulated scenes with known truth the checker calls every prompt exact, and on
    near misses (one atom of the prompt made false of the scene) it calls none exact: 100/100 both ways."""
    assert len(validation_items) >= 100
    rng = np.random.default_rng(0)
    agree_pos = agree_neg = 0
    for item in validation_items:
        image = render(item.scene)[0]
        v = compare.judge(image, item.prompt)
        agree_pos += v["exact"] and v["lenient"] and v["atoms"] == 1.0
        miss = shapeseval.near_miss(item, rng)
        assert miss != item.parsed
        agree_neg += not compare.judge(image, miss)["exact"]
    assert (agree_pos, agree_neg) == (len(validation_items), len(validation_items))


def test_items_cover_every_category_reproducibly_and_satisfy_their_prompts(validation_items):
    cats = {(it.tier, it.category) for it in validation_items}
    assert cats == {(t, c) for t, cs in shapeseval.TIERS.items() for c in cs}
    again = shapeseval.items("AB", per_category=9, seed=5)
    assert [it.prompt for it in again] == [it.prompt for it in validation_items]
    for it in validation_items:
        assert parse_prompt(it.prompt) == it.parsed and shapeseval.satisfied(it.parsed, it.scene)
    tier_b = [it.parsed for it in validation_items if it.tier == "B"]
    assert min(len(p.objects) for p in tier_b) >= 2 and max(len(p.objects) for p in tier_b) == 4
    assert any(p.absent for p in tier_b) and any(len(p.relations) == 3 for p in tier_b)  # chains
    assert shapeseval.items("B", 2, seed=1, categories=["chain"])[0].category == "chain"


def test_satisfied_rejects_a_scene_that_breaks_one_fact(validation_items):
    lefts = [it for it in validation_items if any(r in ("left", "right") for _, r, _ in it.parsed.relations)]
    assert lefts and not any(shapeseval.satisfied(it.parsed, it.scene.mirrored()) for it in lefts)
    absences = [it for it in validation_items if it.parsed.absent]
    o = absences[0].scene.objects[0]
    wrong = Prompt(absences[0].parsed.objects, absences[0].parsed.relations, [shapeseval.Phrase(o.colour, o.shape)])
    assert not shapeseval.satisfied(wrong, absences[0].scene)


def test_atoms_count_the_facts_that_hold(validation_items):
    item = next(it for it in validation_items if it.category == "chain")
    p = item.parsed
    image = render(item.scene)[0]
    k = len(set(p.objects)) + len(p.relations) + len(p.absent)
    i, rel, j = p.relations[0]
    flipped = Prompt(p.objects, [(j, rel, i)] + p.relations[1:], p.absent)  # one relation of k facts false
    v = compare.judge(image, flipped)
    assert math.isclose(v["atoms"], (k - 1) / k) and not v["relation"] and v["present"]


def test_paired_bootstrap_matches_the_normal_interval():
    rng = np.random.default_rng(3)
    n = 400
    a = rng.random(n) < 0.8
    b = rng.random(n) < 0.6
    d = a.astype(float) - b
    mean, lo, hi = paired_bootstrap(a, b, reps=20000, seed=1)
    half = 1.96 * d.std(ddof=1) / math.sqrt(n)
    assert math.isclose(mean, d.mean())
    assert abs(lo - (mean - half)) < 0.1 * half and abs(hi - (mean + half)) < 0.1 * half
    assert paired_bootstrap(a, a) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap(a, b[:-1])


def test_an_absence_is_the_answer_no():
    from poegen.experts.shapes import load_vlm
    from poegen.families import shapes_prompt_product

    scorer = load_vlm()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    yes = scorer.expert("is there a red ball?").log_potential(x)
    no = scorer.expert("is there a red ball?", negate=True).log_potential(x)
    assert torch.allclose(yes.exp() + no.exp(), torch.ones(4), atol=1e-5)
    product = shapes_prompt_product("a box, no red objects", vlm=scorer)
    negated = sorted(p.question for p in product.potentials if getattr(p, "sign", 1) < 0)
    assert negated == ["is there a red ball?", "is there a red box?", "is there a red wedge?"]


def test_the_footprint_is_quiet_on_witnesses_and_costs_a_floating_extra(validation_items):
    """The footprint potential (nothing drawn away from the placed objects) is 0 on the simulated witnesses of
    tier B's four-object prompts and of one-object prompts, and costs an extra ball in mid-air, which the scorer
    does not see."""
    from dataclasses import replace

    from poegen.experts.shapes import load_vlm
    from poegen.experts.shapes.footprint import Footprint
    from poegen.experts.shapes.world import Scene, SceneObject
    from poegen.families import shapes_prompt_product

    vlm = load_vlm()
    quiet = []
    for item in [it for it in validation_items if it.category == "objects"]:
        product = shapes_prompt_product(item.prompt, vlm=vlm)
        (fp,) = [p for p in product.potentials if isinstance(p, Footprint)]
        base = float(fp.log_potential(torch.from_numpy(render(item.scene)[0])[None]))
        quiet.append(base)
        colour = next(c for c in ("red", "green", "blue", "yellow", "magenta", "cyan")
                      if c not in {o.colour for o in item.scene.objects})
        extra = Scene(item.scene.objects + (SceneObject("ball", colour, "small", 2.6, 5.0),))  # top right, floating
        assert float(fp.log_potential(torch.from_numpy(render(extra)[0])[None])) < base - 5.0
    # a simulated witness settles off the placed centres now and then (a ball rolls, a stack's top slides off)
    assert sorted(quiet)[len(quiet) // 2] > -1.0, quiet
    single = [it for it in validation_items if it.category == "single"][:4]
    for item in single:  # one object is placed too, in the middle of the floor
        (fp,) = [p for p in shapes_prompt_product(item.prompt, vlm=vlm).potentials if isinstance(p, Footprint)]
        assert float(fp.log_potential(torch.from_numpy(render(item.scene)[0])[None])) > -1.0
    assert single, "no one-object witnesses to check"


def test_a_negation_that_asks_every_shape_makes_the_absent_one_a_coloured_shape():
    # prompt set 1002 drew such a prompt and crashed on the empty choice of a missing shape
    assert len(shapeseval.items("B", 4, 1002, ["negation"])) == 4
    prompts = [it.prompt for it in shapeseval.items("B", 4, 1006, ["negation"])]
    assert "a yellow wedge, a red box and a magenta ball, no cyan wedge" in prompts


def test_eval_report_merges_saved_runs(tmp_path, capsys):
    """`poegen eval shapes --report` prints the tables from samplers run separately: the paired difference of the
    merged rows is the one computed by hand, and a run present in two folders is refused (exit 2, one line)."""
    import json

    from poegen.cli import main

    prompts = ["two red balls", "a blue box and no ball"]

    def write(folder, sampler, exact):
        rows = [dict(sampler=sampler, prompt=p, seed=s, present=True, relation=True, exact=e, vlm=0.0, log_Z=0.0,
                     nfe=320, seconds=1.0, ess=[], particles=8, metrics={"pool_exact": float(e)}, lenient=e,
                     atoms=1.0, tier="B", category="counts")
                for (p, s), e in zip([(p, s) for p in prompts for s in (0, 1)], exact)]
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "rows.json").write_text(json.dumps(rows))

    write("a", "poe", [True, True, True, False])
    write("b", "best-of-n", [True, False, False, False])
    assert main(["eval", "shapes", "--report", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "B_poe_strict=0.750" in out and "B_best-of-n_strict=0.250" in out
    assert "diff_vs_best_of_n=+0.500" in out
    assert main(["eval", "shapes", "--report", str(tmp_path / "a"), str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("poegen: error: --report:") and "in two of the folders" in err and err.count("\n") == 1
