import math

import numpy as np
import pytest
import torch

from poegen.cli import main
from poegen.experts.physics import PhysicsExpert
from poegen.experts.shapes.render import centroid, render
from poegen.scene import parse_scene

SPEC = {"objects": [{"name": "box", "shape": "box", "colour": "blue", "size": "large", "position": [-1.0, 1.0]},
                    {"name": "ball", "shape": "ball", "colour": "red", "position": [1.5, 2.0]}]}


@pytest.fixture(scope="module")
def physics():
    return PhysicsExpert(parse_scene(SPEC))


def test_masks_and_positions_match_the_renderer(physics):
    image, masks = render(physics.scene, 32)
    assert np.allclose(physics.masks.numpy(), masks) and np.allclose(physics.image.numpy(), image)
    for pos, m in zip(physics.positions, masks):
        assert pos == pytest.approx(centroid(m))
    ball = physics.scene.objects[1]
    assert ball.y == pytest.approx(0.6, abs=0.05)  # dropped from y = 2: it fell to the floor


def test_layout_potential_prefers_the_simulated_layout(physics):
    lp = physics.layout_potential()
    rendered = physics.image[None]
    mirrored = rendered.flip(-1)
    blank = torch.zeros_like(rendered)
    v = lp.log_potential(torch.cat([rendered, mirrored, blank]))
    assert v.shape == (3,) and v[0] > -0.2 and v[0] > v[1] + 1 and v[0] > v[2] + 1


def test_hard_constraint_accepts_only_the_layout(physics):
    hc = physics.hard_constraint(tolerance=2.0)
    v = hc.log_potential(torch.cat([physics.image[None], physics.image[None].flip(-1)]))
    assert v[0] == 0 and v[1] == -math.inf
    assert hc.schedule(0.99) == 0 and hc.schedule(1.0) == 1  # only at the last level


def test_scene_product_conditions_experts_on_simulated_positions(physics):
    from poegen.experts.shapes.prompt import build_scene_product

    product = build_scene_product(physics, guidance=1.0)
    assert product.weights == [-1.0, 1.0, 1.0]  # null^(1 - 2) * box * ball
    assert product.experts[0].position is None
    assert [e.position for e in product.experts[1:]] == physics.positions
    assert product.potential_names == ["physics-layout"]


def test_generate_scene_frames_writes_frames_and_gif(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "roll.png"
    assert main(["generate", "--scene", "examples/roll_off.yaml", "--frames", "2", "--steps", "2",
                 "--particles", "2", "--quiet", "--out", str(out)]) == 0
    assert Image.open(tmp_path / "roll_f00.png").size == (256, 256)
    gif = Image.open(tmp_path / "roll.gif")
    assert gif.n_frames == 2
    assert main(["generate", "--scene", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_regional_prompt_experts_follow_the_simulated_masks(tmp_path):
    from diffusers import DDPMScheduler, UNet2DConditionModel

    import poegen
    from poegen.experts.diffusers import TextConditionedUNetExpert
    from poegen.scene import load_scene
    from poegen.testing import tiny_sd_folder

    physics = PhysicsExpert(load_scene("examples/stacking.yaml"))
    root = tiny_sd_folder(tmp_path)
    unet = UNet2DConditionModel.from_pretrained(root / "unet")
    ab = DDPMScheduler.from_pretrained(root / "scheduler").alphas_cumprod
    texts = []

    def make_expert(text):  # prompt experts that share one UNet
        texts.append(text)
        e = TextConditionedUNetExpert.from_pretrained(str(root), text)
        return TextConditionedUNetExpert(unet, ab, "epsilon", e.text_embeddings, name=text)

    product = physics.regional_product(make_expert)
    regions = physics.region_weights(8)
    assert texts == ["a red ball on a blue box", "a red ball on a blue box, a large blue box",
                     "a red ball on a blue box, a small red ball"]
    assert torch.allclose(regions.sum(0), torch.ones(8, 8))
    calls = []
    unet.register_forward_hook(lambda *a: calls.append(1))
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor(0.7)
    x0 = product.evaluate(x, sigma, product.total_weight((4, 8, 8), "cpu", torch.float32)).x0
    assert len(calls) == 1  # three regional experts, one backbone call
    each = [e.denoise(x, sigma) for e in product.experts]
    assert torch.allclose(x0, sum(r * d for r, d in zip(regions, each)), atol=1e-5)
    box = regions[1] == 1  # latent cells inside the box: the box's expert alone
    assert box.any() and torch.allclose(x0[..., box], each[1][..., box], atol=1e-5)
    r = poegen.sample(product, num_particles=4, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert r.x.shape == (4, 4, 8, 8) and torch.isfinite(r.x).all()
