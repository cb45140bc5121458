"""Physics over time (experts/motion.py): one simulation recorded per frame, and the potentials on clips."""
import math

import pytest
import torch

from poegen.experts.motion import RegionalMotionPotential, TrajectoryPotential, trajectory
from poegen.experts.physics import PhysicsExpert
from poegen.experts.shapes.render import render
from poegen.experts.shapes.world import SceneObject
from poegen.experts.scene import SceneError, parse_scene

# a red ball pushed along the top of a blue box rolls off its right edge (x = -0.2) onto the floor
SPEC = parse_scene({"prompt": "a red ball rolls off a blue box", "physics": {"duration": 3.0},
                    "objects": [{"name": "box", "shape": "box", "colour": "blue", "size": "large", "position": [-1.2, 1.0]},
                                {"name": "ball", "shape": "ball", "colour": "red", "position": [-1.6, 2.61],
                                 "velocity": [3.5, 0.0]}]})
FRAMES, FPS, G = 31, 10.0, 9.81


@pytest.fixture(scope="module")
def traj():
    return trajectory(SPEC, FRAMES, FPS)


def _clip(scenes):
    return torch.stack([torch.from_numpy(render(s, 32)[0]) for s in scenes], 1)[None]  # (1, 3, F, H, W)


def test_ball_rolls_off_the_box_falls_and_lands(traj):
    assert traj.masks.shape == (FRAMES, 2, 32, 32) and traj.depth.shape == (FRAMES, 32, 32)
    assert traj.centroids.shape == (FRAMES, 2, 2) and traj.images.shape == (FRAMES, 3, 32, 32)
    x, y = traj.poses[:, 1, 0], traj.poses[:, 1, 1]
    assert (x.diff() > 0).all() and x[-1] > 1.0  # pushed right, it keeps going right
    assert traj.poses[:, 0, :2].sub(traj.poses[0, 0, :2]).abs().max() < 0.02  # the box stays put
    on_box = y > 2.59  # resting on the box top (2.0 + radius 0.6)
    leave = int((~on_box).nonzero()[0])
    land = int((y < 0.62).nonzero()[0])
    assert on_box[:leave].all() and leave >= 5 and land > leave + 3
    assert (y[leave - 1:land + 1].diff() < 0).all()  # a monotone fall once it leaves the box ...
    t = traj.times[leave - 1:land] - traj.times[leave - 1]
    assert (y[leave - 1:land] >= y[leave - 1] - G * t ** 2 / 2 - 1e-3).all()  # ... never faster than free fall
    assert y[land:].sub(0.6).abs().max() < 0.01  # and it ends on the floor: y = radius
    # the centroids track the poses: right and down in pixels
    assert traj.centroids[-1, 1, 0] > traj.centroids[0, 1, 0] + 10 and traj.centroids[-1, 1, 1] > traj.centroids[0, 1, 1] + 8


def test_a_ball_dropped_from_rest_starts_falling_at_g():
    traj = trajectory([SceneObject("ball", "red", "small", 0.0, 5.0)], 4, 20.0, velocities=[(0.0, 0.0, 0.0)])
    acc = traj.poses[:, 0, 1].diff().diff() * 20.0 ** 2
    assert acc[0] == pytest.approx(-G, rel=0.03)  # y = y0 - g t^2 / 2 while it is still slow
    assert traj.names == ("red ball",)


def test_frames_render_through_the_still_route(traj):
    for f in (0, 12, FRAMES - 1):  # PhysicsExpert(spec, until=t): its own simulation, the same code path
        still = PhysicsExpert(SPEC, until=float(traj.times[f]))
        assert torch.equal(traj.masks[f], still.masks) and torch.equal(traj.images[f], still.image)
        assert torch.equal(traj.depth[f], still.depth())
        assert torch.allclose(traj.centroids[f], torch.tensor(still.positions))


def test_trajectory_refuses_clips_longer_than_the_simulation_and_wrong_frame_counts(traj):
    with pytest.raises(SceneError, match=r"physics.duration: 40 frames at 10 fps last 3.90 s"):
        trajectory(SPEC, 40, FPS)
    with pytest.raises(ValueError, match="velocities"):
        trajectory(SPEC, 4, FPS, velocities=[(1.0, 0.0, 0.0)] * 2)
    with pytest.raises(ValueError, match="the clips have 30 frames, the trajectory 31"):
        TrajectoryPotential(traj).log_potential(torch.zeros(1, 3, 30, 32, 32))


def test_trajectory_potential_is_max_on_the_simulation_and_falls_by_the_closed_form(traj):
    s, d = 2.0, 3
    potential = TrajectoryPotential(traj, tolerance=s)
    clip = traj.clip()[None]
    shuffled = clip[:, :, torch.randperm(FRAMES, generator=torch.Generator().manual_seed(0))]
    shifted = clip.roll(d, dims=-1)  # every object d px to the right (floor and background are uniform across)
    v = potential.log_potential(torch.cat([clip, shifted, shuffled]))
    assert v.shape == (3,)
    assert v[0] > -0.05  # its own render: the colour centroids sit on the simulated ones
    in_view = int(traj.visible.sum())  # every (frame, object) pair in view: 2 objects x 31 frames
    assert in_view == 2 * FRAMES
    assert float(v[1]) == pytest.approx(-in_view * d ** 2 / (2 * s ** 2), rel=0.02)
    assert v[2] < v[0] - 50
    assert torch.allclose(torch.stack([potential.log_potential(c[None]) for c in (clip[0], shifted[0], shuffled[0])])[:, 0], v)


def test_regional_potential_prefers_the_rendered_clip_to_a_recoloured_one(traj):
    potential = RegionalMotionPotential(traj)
    clip = traj.clip()[None]
    green_ball = _clip([s.recoloured({"red": "green"}) for s in traj.scenes])
    reversed_ = clip.flip(2)
    v = potential.log_potential(torch.cat([clip, green_ball, reversed_]))
    assert v[0] > -0.2 * FRAMES  # both objects fill their masks in every frame
    assert v[0] > v[1] + FRAMES * math.log(0.5 / 0.05)  # the ball's colour is missing from each frame
    assert v[0] > v[2] + 5
    mean = RegionalMotionPotential(traj, reduce="mean").log_potential(clip)
    assert float(mean) == pytest.approx(float(v[0]) / FRAMES, rel=1e-5)


def test_potentials_move_with_a_product_and_score_the_same_there(traj):
    from poegen.experts.analytic import Gaussian
    from poegen.product import Product

    potentials = [RegionalMotionPotential(traj), TrajectoryPotential(traj)]
    clip = traj.clip()[None]
    before = [float(p.log_potential(clip)) for p in potentials]
    product = Product([Gaussian(torch.zeros(2), torch.eye(2))], potentials=potentials).to("cpu")  # walks into traj
    assert [float(p.log_potential(clip.double())) for p in product.potentials] == pytest.approx(before, abs=1e-6)
