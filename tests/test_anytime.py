"""Anytime sampling (poegen.anytime): rounds until the product's potentials certify a sample, within an NFE budget;
a fixed budget is one run picked as before; K distinct images; the engine's level-0 ancestors."""
import json

import pytest
import torch

import poegen
from poegen import anytime, defaults, samplers
from poegen.cli import main
from poegen.experts.analytic import Gaussian
from poegen.product import Product


class Mean:
    """A potential: the sample's mean coordinate, met at ``threshold`` (None: says nothing)."""

    def __init__(self, threshold=None):
        self.name = "mean"
        if threshold is not None:
            self.certify_threshold = threshold

    def log_potential(self, x0):
        return x0.flatten(1).mean(1)


def _product(threshold):
    return Product([Gaussian(torch.zeros(4), torch.eye(4))], potentials=[Mean(threshold)])


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _per_particle(steps=4, moves=1):
    """A particle's NFE: one run of one particle with ``moves`` MCMC moves a level, as the engine counts it."""
    return samplers.sample(_product(None), num_particles=1, num_steps=steps, generator=_gen(),
                           mcmc_steps=moves).nfe["Gaussian[0]"]


SEARCH = defaults.FIRST_ROUND * 2  # poe's first round: (1 + its one move) times FIRST_ROUND particles, unmoved


def test_fixed_budget_is_one_run_picked_as_before():
    product = _product(0.0)
    for select in ("best", "draw"):
        before = samplers.sample(product, num_particles=6, num_steps=4, generator=_gen(), select=select)
        got = anytime.sample(product, particles=6, steps=4, generator=_gen(), budget="fixed", select=select)
        assert torch.equal(got.x, before.x) and got.rounds == [6]
        assert got.certified == [bool(before.x.mean() >= 0.0)]


def test_anytime_stops_at_the_first_round_with_a_certified_particle():
    product = _product(-100.0)  # every particle is certified
    got = anytime.sample(product, particles=8, steps=4, generator=_gen())
    assert got.rounds == [SEARCH] and got.certified == [True] and got.unmet == [[]]
    assert got.first_certified == got.nfe
    assert got.nfe["Gaussian[0]"] == SEARCH * _per_particle(moves=0)
    # the search round is the engine run without moves: the same particles as poe at mcmc_steps=0
    alone = samplers.sample(product, num_particles=SEARCH, num_steps=4, generator=_gen(), mcmc_steps=0, select="all")
    assert any(torch.equal(got.x[0], x) for x in alone.particles.x)
    # the yardstick, from the search round by the engine's count: what a fixed run of the particles spends
    assert got.fixed_nfe == anytime.sample(product, particles=8, steps=4, generator=_gen(), budget="fixed").nfe
    # a sampler without moves searches with FIRST_ROUND particles
    assert anytime.sample(product, "smc", particles=8, steps=4, generator=_gen()).rounds == [defaults.FIRST_ROUND]


def test_anytime_spends_at_most_its_budget_and_returns_the_best_of_every_round():
    product = _product(100.0)  # never certified
    budget = 300
    got = anytime.sample(product, particles=8, steps=4, generator=_gen(), max_nfe=budget)
    per, search = _per_particle(), _per_particle(moves=0)
    spent = got.rounds[0] * search + sum(got.rounds[1:]) * per
    assert got.nfe["Gaussian[0]"] == spent <= budget < spent + per  # another particle would not have fit
    assert got.rounds[0] == SEARCH and all(n == 8 for n in got.rounds[1:-1])
    assert got.certified == [False] and got.unmet == [["mean"]] and got.first_certified is None
    # the same rounds run by hand on the same generator: the pick is the highest final reward over all of them
    gen, best = _gen(), -float("inf")
    for k, n in enumerate(got.rounds):
        r = samplers.sample(product, num_particles=n, num_steps=4, generator=gen, select="all",
                            mcmc_steps=0 if k == 0 else 1)
        best = max(best, float(r.particles.aux["f"].max()))
    assert float(got.x.mean()) == pytest.approx(best, abs=1e-5)
    # the default budget: MAX_NFE_FACTOR fixed runs of the particles
    got = anytime.sample(product, particles=8, steps=4, generator=_gen())
    spent = got.rounds[0] * search + sum(got.rounds[1:]) * per
    assert spent <= defaults.MAX_NFE_FACTOR * 8 * per < spent + per


def test_auto_runs_rounds_for_an_image_and_one_fixed_run_for_a_clip(monkeypatch):
    monkeypatch.setattr(anytime, "_fixed", lambda *a: "fixed")
    monkeypatch.setattr(anytime, "_rounds", lambda *a: "rounds")
    image, clip = _product(100.0), _product(100.0)
    clip.shape = (3, 16, 32, 32)  # a clip's (C, F, H, W)
    assert anytime.sample(image, budget="auto") == "rounds" and anytime.sample(clip, budget="auto") == "fixed"
    assert anytime.sample(clip, budget="anytime") == "rounds" and anytime.sample(image, budget="fixed") == "fixed"


def test_a_product_that_cannot_certify_runs_one_round_of_its_particles():
    got = anytime.sample(_product(None), particles=5, steps=4, generator=_gen())
    assert got.rounds == [5] and got.certified == [None] and got.first_certified is None


def test_k_images_are_certified_and_visibly_different_when_they_can_be():
    product = _product(-100.0)  # every particle certified: K images in small rounds
    got = anytime.sample(product, particles=8, steps=4, generator=_gen(), images=3)
    assert len(got.x) == 3 and got.certified == [True] * 3
    assert all(anytime.distinct(got.images[i], got.images[j]) for i in range(3) for j in range(i))
    assert all(n == SEARCH for n in got.rounds)


def test_choose_prefers_visibly_different_images_then_fills_in_order():
    a, b, c = torch.zeros(1, 10, 10), torch.zeros(1, 10, 10), torch.ones(1, 10, 10)
    assert not anytime.distinct(a, b) and anytime.distinct(a, c)
    assert [t[1] for t in anytime._choose([(a, "a"), (b, "b"), (c, "c")], 2)] == ["a", "c"]
    assert [t[1] for t in anytime._choose([(a, "a"), (b, "b"), (c, "c")], 3)] == ["a", "c", "b"]


def test_the_engine_tracks_each_particles_level_zero_ancestor():
    product = _product(0.0)
    never = samplers.sample(product, "ais", num_particles=6, num_steps=4, generator=_gen(), select="all")
    assert never.particles.aux["origin"].tolist() == list(range(6))  # no resampling: each its own
    always = samplers.sample(product, "poe", num_particles=6, num_steps=4, generator=_gen(), select="all",
                             ess_threshold=1.0, resample_start=0.0)
    origin = always.particles.aux["origin"]
    assert origin.dtype == torch.long and set(origin.tolist()) <= set(range(6))


@pytest.mark.parametrize("bad, word", [(dict(budget="some"), "budget"), (dict(images=0), "images"),
                                       (dict(max_nfe=0), "max_nfe")])
def test_bad_budgets_are_named(bad, word):
    with pytest.raises(ValueError, match=word):
        anytime.sample(_product(0.0), particles=4, steps=2, generator=_gen(), **bad)


def test_generate_writes_its_rounds_and_k_images(tmp_path):
    out = tmp_path / "a.png"
    assert main(["generate", "a red ball", "--out", str(out), "--steps", "6", "--images", "2", "-q"]) in (0, None)
    from PIL import Image
    metas = [json.loads(Image.open(p).text["poegen"]) for p in (out, tmp_path / "a_1.png")]
    for m in metas:
        assert m["rounds"][0] == SEARCH and m["job"]["budget"] == defaults.BUDGET
        assert isinstance(m["certified"], bool)
    assert metas[0]["rounds"] == metas[1]["rounds"]  # one search for both
    fixed = tmp_path / "f.png"
    assert main(["generate", "a red ball", "--out", str(fixed), "--steps", "6", "--budget", "fixed", "-q"]) in (0, None)
    assert json.loads(Image.open(fixed).text["poegen"])["rounds"] == [defaults.PARTICLES]
    assert poegen  # the package imports without the CLI
