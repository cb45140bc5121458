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
