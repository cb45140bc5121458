"""The shapes world's motion grammar: six kinds of motion prompt, each simulated in view, varied by the seed."""
import pytest
import torch

from poegen.experts.motion import trajectory
from poegen.experts.shapes.motions import EXAMPLES, benchmark_prompts, kind_of, motion_scene, stays_in_view
from poegen.specs import clip_seconds


@pytest.mark.parametrize("kind", list(EXAMPLES))
def test_every_kind_reads_moves_and_stays_in_view(kind):
    text = EXAMPLES[kind]
    assert kind_of(text) == kind
    spec = motion_scene(text, seed=3, duration=clip_seconds())
    assert stays_in_view(spec)
    traj = trajectory(spec, 16, 8.0, 32)
    assert bool(traj.visible.all())  # every object in every frame
    moved = (traj.poses[-1, :, :2] - traj.poses[0, :, :2]).norm(dim=-1).max()
    assert moved > 0.8, (kind, traj.poses[0], traj.poses[-1])  # world units: the motion happens within the clip


def test_the_seed_varies_the_start_and_none_is_the_canonical_scene():
    text = EXAMPLES["hit"]
    a, b, again = (motion_scene(text, seed=s) for s in (1, 2, 1))
    assert a.objects != b.objects and a.objects == again.objects
    canon = motion_scene(text)
    assert canon.objects == motion_scene(text).objects and canon.objects not in (a.objects, b.objects)
    assert [o.colour for o in a.objects] == [o.colour for o in canon.objects]  # only places and pushes vary


@pytest.mark.parametrize("text, words", [
    ("a red ball rolls under a blue box", "not one the shapes world can simulate"),
    ("a red ball rolls off a blue ball", "an object rolls off a box"),
    ("a red ball falls onto a blue ball", "nothing comes to rest on a ball"),
    ("a tower of a red ball, a blue box and a green box topples", "only the top of a tower may be a ball"),
    ("a tower of a red box topples", "two to four objects"),
    ("a ball hits a blue box", "must be one object with a colour and a shape"),
])
def test_a_motion_it_cannot_read_is_refused_with_examples_that_work(text, words):
    with pytest.raises(ValueError) as e:
        motion_scene(text)
    assert words in str(e.value) and EXAMPLES["drop"] in str(e.value) and EXAMPLES["topple"] in str(e.value)


def test_a_still_prompt_has_no_motion():
    assert motion_scene("a red ball on a blue box") is None and kind_of("a red ball") is None


def test_benchmark_prompts_cover_every_kind_and_held_out_differs_from_tuning():
    held, tuning = benchmark_prompts(2, 0), benchmark_prompts(2, 1000)
    for prompts in (held, tuning):
        assert [k for k, _ in prompts] == [k for k in EXAMPLES for _ in range(2)]
        assert all(kind_of(p) == k for k, p in prompts)
        assert len({p for _, p in prompts}) == len(prompts)
    assert not {p for _, p in held} & {p for _, p in tuning}
    assert benchmark_prompts(2, 0) == held  # drawn the same way every time


def test_a_started_clip_product_carries_its_render():
    from poegen import defaults
    from poegen.families import build_product
    from poegen.specs import from_prompt

    product = build_product(from_prompt(EXAMPLES["off"]), video=True, frames=4, potential_weight=0)
    x, sigma = product.start
    assert sigma == defaults.SHAPES_CLIP_START and x.shape == product.shape == (3, 4, 32, 32)
    assert float(x.std()) > 0.1 and torch.isfinite(x).all()
    assert build_product(from_prompt(EXAMPLES["off"]), video=True, frames=4, potential_weight=0, start=0).start is None
