"""The shapes world in motion without a video model: the image prior per frame at simulated centroids
(``shapes.tracked.TrackedExpert``), routed from a scene spec or a motion prompt through --video to a GIF."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from poegen import defaults
import torch

from poegen import samplers
from poegen.experts.motion import foreground_iou, trajectory
from poegen.experts.shapes.tracked import TrackedExpert
from poegen.experts.shapes.render import render
from poegen.experts.shapes.world import Scene
from poegen.families import build_product
from poegen.specs import from_prompt, motion_scene

ROOT = Path(__file__).resolve().parents[1]
ROLL = "a red ball rolls off a blue box"
FAST = ["--particles", "2", "--steps", "2", "--threads", "1", "-q"]


def _cli(args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "poegen", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _gif(path):
    from PIL import Image

    gif = Image.open(path)
    return gif, json.loads(gif.info["comment"])


def test_clip_expert_is_the_image_prior_frame_by_frame():
    """Folding frames into the batch gives each frame the phrase expert at that frame's position (the null prior
    where the object is out of view), all experts in one forward."""
    from poegen.experts.shapes.model import load_prior

    prior = load_prior()
    track = torch.tensor([[8.0, 20.0], [16.0, 12.0], [float("nan")] * 2])
    ball = TrackedExpert(prior.net, "red ball", track, torch.tensor([True, True, False]))
    null = TrackedExpert(prior.net, None, torch.full((3, 2), float("nan")))
    x, sigma = torch.randn(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2, torch.tensor(2.0)
    got_ball, got_null = TrackedExpert.denoise_batch([ball, null], x, sigma)
    for f, want in enumerate([prior.expert("red ball", (8.0, 20.0)), prior.expert("red ball", (16.0, 12.0)),
                              prior.null()]):
        torch.testing.assert_close(got_ball[:, :, f], want.denoise(x[:, :, f], sigma), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got_null[:, :, f], prior.null().denoise(x[:, :, f], sigma), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got_ball[:, :, 0], got_ball[:, :, 1], atol=1e-3)  # the position moved the ball


def test_clip_regional_composition_follows_each_object_frame_by_frame():
    """Regional composition on clips: per frame the weights sum to one at every pixel, each object's phrase has its
    full weight at that frame's simulated centroid, and a frame where it is out of view gives it no window."""
    from poegen.families import regional_masks

    product = build_product(from_prompt(ROLL), video=True, frames=3, potential_weight=0, region=5.0)
    null, *phrases = product.experts
    B = product.total_weight((3, 3, 32, 32), "cpu", torch.float32)
    assert torch.allclose(B, torch.ones_like(B), atol=1e-5)  # the weights sum to one at every pixel of every frame
    for e, w, m in zip(phrases, product.weights[1:], product.masks[1:]):
        for f, place in enumerate(e.places):
            if place is not None:
                c, r = (int(round(v)) for v in place)
                assert abs(float(m[f, r, c]) - 1) < 0.05
    away = TrackedExpert(null.net, "red ball", torch.tensor([[8.0, 20.0], [float("nan")] * 2]),
                      torch.tensor([True, False]))
    there = TrackedExpert(null.net, "blue box", torch.tensor([[24.0, 24.0]] * 2))
    nul = TrackedExpert(null.net, None, torch.full((2, 2), float("nan")))
    masks = regional_masks([nul, away, there], [-0.6, 0.8, 0.8], 32, 5.0)
    assert float(masks[1][0, 20, 8]) > 0.95 and float(masks[2][0, 20, 8]) < 0.1  # frame 0: the ball's place
    assert float(masks[1][1, 20, 8]) > 0.95 and float(masks[2][1, 24, 24]) > 0.95  # frame 1: no ball window,
    assert float(masks[1][1, 24, 24]) < 0.1  # so the ball keeps only the uncovered share, as everywhere else
    assert regional_masks([nul, TrackedExpert(null.net, "red ball", torch.full((2, 2), float("nan")))], [0.2, 0.8],
                          32, 5.0) is None  # an unplaced phrase: no regional composition
    default = build_product(from_prompt(ROLL), video=True, frames=3, potential_weight=0)
    assert all(m is None for m in default.masks)  # off by default for clips (it lowered poe's clip IoU)


def test_clip_products_keep_their_fps_and_refuse_the_image_ablations():
    """A clip's fps is the Product's own (the default clip rate, or the one asked); an image's is None; the image
    ablations, which a clip would ignore, are refused by name."""
    clip = build_product(from_prompt(ROLL), video=True, frames=3, potential_weight=0)
    assert clip.fps == defaults.SHAPES_CLIP_FPS
    assert build_product(from_prompt(ROLL), video=True, frames=3, fps=2.5, potential_weight=0).fps == 2.5
    assert build_product(from_prompt("a red ball"), potential_weight=0).fps is None
    for ablation in ("counts", "footprint"):
        with pytest.raises(TypeError, match=ablation):
            build_product(from_prompt(ROLL), video=True, frames=3, **{ablation: False})


def test_sampled_clip_follows_the_simulation():
    """Per-frame foreground IoU of the sampled clip against the simulated masks (measured: mean 0.84 and 0.89
    for seeds 0 and 1 at 3 frames, 2 particles, 6 steps), and it is the motion that matches: the same clip played
    backwards agrees less (0.62, 0.66)."""
    frames = 3
    product = build_product(from_prompt(ROLL), video=True, frames=frames, fps=1.0, start=0)  # from pure noise
    result = samplers.sample(product, sampler="poe", num_particles=2, num_steps=6,
                             generator=torch.Generator().manual_seed(0))
    assert result.x.shape == (2, 3, frames, 32, 32)
    traj = trajectory(motion_scene(ROLL, seconds=4.0), frames, product.fps, 32)
    iou = foreground_iou(result.x[:1], traj)[0]
    backwards = foreground_iou(result.x[:1].flip(2), traj)[0]
    assert iou.mean() > 0.7, iou
    assert iou.mean() > backwards.mean() + 0.1, (iou, backwards)


def test_foreground_iou_scores_the_simulation_itself_near_one_and_a_blank_clip_low():
    traj = trajectory(motion_scene(ROLL, seconds=4.0), 3, 1.0, 32)
    assert foreground_iou(traj.clip()[None], traj).min() == 1
    pushed = trajectory(motion_scene("a blue box is pushed", seed=0), 16, 8.0, 32)  # edges it once scored 0.71
    assert foreground_iou(pushed.clip()[None], pushed).min() == 1
    assert foreground_iou(pushed.clip()[None].roll(2, dims=-1), pushed).max() < 0.8  # two pixels off: it sees it
    blank = torch.from_numpy(render(Scene(()), 32)[0])  # background and floor only
    assert foreground_iou(blank[:, None].expand(3, 3, 32, 32)[None], traj).max() == 0


def test_cli_writes_a_gif_of_a_scene_and_of_a_motion_prompt(tmp_path):
    r = _cli(["generate", "--scene", str(ROOT / "examples" / "roll_off.yaml"), "--video", "scene.gif", "--frames",
              "3", *FAST], tmp_path)
    assert r.returncode == 0, r.stderr
    gif, meta = _gif(tmp_path / "scene.gif")
    assert gif.n_frames == 3 and gif.size == (256, 256)  # written at display size, the native frames beside it
    raw, _ = _gif(tmp_path / "scene_raw.gif")
    assert raw.n_frames == 3 and raw.size == (32, 32)
    assert any(k.startswith("shapes-tracked[") for k in meta["experts"]) and "motion-trajectory" in meta["potentials"]
    assert abs(gif.info["duration"] - 1000 / defaults.SHAPES_CLIP_FPS) <= 5  # GIF keeps hundredths of a second
    r = _cli(["generate", ROLL, "--video", "roll.gif", *FAST], tmp_path)
    assert r.returncode == 0, r.stderr
    gif, meta = _gif(tmp_path / "roll.gif")
    assert gif.n_frames == defaults.SHAPES_CLIP_FRAMES  # the shapes world's default
    assert "shapes-tracked[small red ball]" in meta["experts"] and "shapes-tracked[large blue box]" in meta["experts"]


def test_shapes_world_video_no_longer_refuses_and_bad_words_keep_their_error(tmp_path, capsys, monkeypatch):
    from PIL import Image

    from poegen.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["generate", "a red ball", "--video", "still.gif", "--frames", "2", *FAST]) == 0
    assert Image.open(tmp_path / "still.gif").n_frames == 2
    capsys.readouterr()
    assert main(["generate", "a red blorp rolls off a blue box", "--video", "v.gif", *FAST]) == 2
    err = capsys.readouterr().err
    assert "unknown word 'blorp'" in err and err.count("\n") == 1
    assert main(["generate", "a red ball rolls off a blue ball", "--video", "v.gif", *FAST]) == 2
    err = capsys.readouterr().err
    assert "an object rolls off a box" in err and "a cyan ball falls onto a magenta box" in err  # with what works
    assert not (tmp_path / "v.gif").exists()


def test_judge_clip_passes_the_simulation_and_not_it_played_backwards():
    """The clip verdict against the simulation: its own render is exact in every frame with IoU near one; played
    backwards, every frame still holds the two objects (exact judges what is there, not where) but the IoU falls
    (measured 0.96 and 0.62)."""
    from poegen.compare import judge_clip
    from poegen.experts.shapes.vocab import parse_phrase

    spec = motion_scene(ROLL, seconds=4.0)
    traj = trajectory(spec, 4, 1.0, 32)
    phrases = [parse_phrase(f"{o.size} {o.colour} {o.shape}") for o in spec.objects]
    ok, back = judge_clip(traj.clip(), traj, phrases), judge_clip(traj.clip().flip(1), traj, phrases)
    assert ok["exact"] and ok["metrics"]["exact_frames"] == 1 and ok["metrics"]["iou"] > 0.9
    assert min(ok["metrics"][f"iou_f{f:02d}"] for f in range(4)) > 0.9
    assert back["exact"] and back["metrics"]["iou"] < ok["metrics"]["iou"] - 0.2
    assert ok["metrics"]["tracked"] == 1 and back["metrics"]["tracked"] == 0  # backwards the objects leave their tracks


def test_compare_runs_clips_and_the_report_shows_them_as_gifs(tmp_path):
    """compare.run with frames samples clips of motion prompts, judges them per frame, and the HTML report embeds
    each sampler's clips as an animated GIF with one frame per clip frame; a still prompt is refused."""
    import base64
    import io
    import re

    from PIL import Image

    from poegen import compare, report

    rows, images = compare.run([ROLL], ["poe", "best-of-n"], 1, particles=2, mcmc_steps=1, steps=2, progress=False,
                               frames=3)
    assert images[("poe", ROLL, 2)].shape == (1, 3, 3, 32, 32)
    assert all(0 <= r.metrics["iou"] <= 1 and r.metrics["exact_frames"] in (0, 1 / 3, 2 / 3, 1) for r in rows)
    page = report.write(tmp_path, rows, images, report.summarise(rows, images)).read_text()
    gifs = re.findall(r"data:image/gif;base64,([A-Za-z0-9+/=]+)", page)
    assert len(gifs) == 2 and all(Image.open(io.BytesIO(base64.b64decode(g))).n_frames == 3 for g in gifs)
    with pytest.raises(ValueError, match="motion prompts"):
        compare.run(["a red ball on a blue box"], ["poe"], 1, frames=3, progress=False)
