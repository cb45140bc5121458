"""Wan image-to-video and VACE from the command line and from batch job lines (--first-frame, --control; Job fields
first_frame, control): the same clip as the expert API given the same inputs and seed, and one-line errors for bad
inputs. Tiny folders as tests/test_wan.py saves them."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import poegen
from poegen.cli import main
from poegen.experts.wan import WanImageToVideoExpert, WanVACEExpert, wan_decoder
from poegen.images import read_video
from poegen.pipeline import write_video

from test_wan import L, PROMPT, save_folders

SIDE, FRAMES = 32, 5
ROOT_EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RUN = ["--sampler", "ancestral", "--particles", "1", "--steps", "2", "--threads", "1", "-q"]


def _grey_clip(n, side=SIDE, seed=0):
    """n grey frames (a moving ramp plus noise: a depth-like control), (n, side, side) uint8; grey GIFs are lossless."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.arange(side), np.arange(side)) * (255 / (2 * side - 2))
    return np.stack([np.clip(np.roll(ramp, 3 * f, axis=1) + rng.normal(0, 20, (side, side)), 0, 255).astype(np.uint8)
                     for f in range(n)])


def _save_clip(grey, root, name):
    """The frames as a folder of PNGs (RGB) and as a GIF; returns (folder, gif)."""
    folder = root / name
    folder.mkdir()
    for f, g in enumerate(grey):
        Image.fromarray(np.repeat(g[..., None], 3, axis=2)).save(folder / f"{f:03d}.png")
    images = [Image.fromarray(g) for g in grey]
    images[0].save(root / f"{name}.gif", save_all=True, append_images=images[1:], duration=100, loop=0)
    return folder, root / f"{name}.gif"


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    """The three tiny folders, a config per folder (16 tokens), a first frame, control clips, and odd inputs."""
    root = save_folders(tmp_path_factory.mktemp("wan-cli"))
    for kind in ("t2v", "i2v", "vace"):
        entry = {"kind": "wan", "path": str(root / kind), "options": {"max_sequence_length": L}}
        (root / f"{kind}.json").write_text(json.dumps({"experts": [entry]}))
    sized = {"kind": "wan", "path": str(root / "i2v"), "options": {"max_sequence_length": L, "height": 32,
                                                                    "width": 32}}
    (root / "i2v-32.json").write_text(json.dumps({"experts": [sized]}))
    rng = np.random.default_rng(7)
    for name, side in (("first", SIDE), ("other", SIDE), ("odd", 40)):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / f"{name}.png")
    _save_clip(_grey_clip(FRAMES), root, "control")
    _save_clip(_grey_clip(4), root, "four")
    _save_clip(_grey_clip(9), root, "nine")
    return root


def _pixels(path):
    """An RGB PNG as (1, 3, H, W) in [-1, 1], read here independently of poegen's reader."""
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]


def _gif_frames(path):
    """A GIF's frames at the clip's own size: the CLI writes NAME.gif enlarged to display size and NAME_raw.gif
    beside it (checked to be the same frames, each pixel repeated), the API's write_video the clip as it is."""
    def read(p):
        gif = Image.open(p)
        frames = []
        for i in range(gif.n_frames):
            gif.seek(i)
            frames.append(np.asarray(gif.convert("RGB")))
        return np.stack(frames)

    raw = Path(path).with_name(Path(path).stem + "_raw.gif")
    if not raw.exists():
        return read(path)
    small, big = read(raw), read(path)
    k = big.shape[1] // small.shape[1]
    assert k > 1 and np.array_equal(big, small.repeat(k, 1).repeat(k, 2))
    return small


def _api_gif(folder, expert, out, seed=0):
    """The API's clip: one expert, the ancestral sampler (1 particle, 2 steps), decoded and written as poegen writes
    a GIF; returns (latents, frames)."""
    product = poegen.Product([expert], weights=[1.0], decode=wan_decoder(str(folder)))
    r = poegen.sample(product, sampler="ancestral", num_particles=1, num_steps=2,
                      generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        clip = product.decode(r.x[:1])[0].float()
    write_video(clip, out, {}, 16)
    return r.x, _gif_frames(out)


def test_first_frame_from_the_cli_gives_the_api_clip(wan, tmp_path, monkeypatch):
    from poegen.job import Job
    from poegen.pipeline import products

    monkeypatch.chdir(tmp_path)
    args = ["generate", PROMPT, "--config", str(wan / "i2v.json"), "--video", "cli.gif", "--frames", str(FRAMES),
            "--first-frame", str(wan / "first.png"), *RUN]
    assert main(args) == 0
    ours = _gif_frames(tmp_path / "cli.gif")
    assert ours.shape == (FRAMES, SIDE, SIDE, 3)
    (expert,) = WanImageToVideoExpert.load_prompts(str(wan / "i2v"), [PROMPT], _pixels(wan / "first.png"),
                                                   num_frames=FRAMES, max_sequence_length=L)
    latents, theirs = _api_gif(wan / "i2v", expert, tmp_path / "api.gif")
    assert np.array_equal(ours, theirs)
    # the same route's latents (Job -> products), before decoding and GIF quantisation
    job = Job.from_dict({"prompt": PROMPT, "config": str(wan / "i2v.json"), "video": "gif", "frames": FRAMES,
                         "first_frame": str(wan / "first.png"), "sampler": "ancestral"}, "test")
    ((_, product),) = products(job)
    assert torch.equal(product.experts[0].condition, expert.condition)
    assert torch.equal(product.experts[0].image_embeds, expert.image_embeds)
    r = poegen.sample(product, sampler="ancestral", num_particles=1, num_steps=2,
                      generator=torch.Generator().manual_seed(0))
    assert float((r.x - latents).abs().max()) <= 1e-6
    # a config entry may name the file itself (options.first_frame): the same conditioning
    entry = {"kind": "wan", "path": str(wan / "i2v"),
             "options": {"max_sequence_length": L, "first_frame": str(wan / "first.png")}}
    (tmp_path / "own.json").write_text(json.dumps({"experts": [entry]}))
    ((_, own),) = products(Job.from_dict({"prompt": PROMPT, "config": str(tmp_path / "own.json"), "video": "gif",
                                          "frames": FRAMES}, "test"))
    assert torch.equal(own.experts[0].condition, expert.condition)
    # not vacuous: another first frame gives another clip
    (other,) = WanImageToVideoExpert.load_prompts(str(wan / "i2v"), [PROMPT], _pixels(wan / "other.png"),
                                                  num_frames=FRAMES, max_sequence_length=L)
    assert float((_api_gif(wan / "i2v", other, tmp_path / "o.gif")[0] - latents).abs().max()) > 1e-2


def test_control_video_from_the_cli_and_a_batch_line_gives_the_api_clip(wan, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grey = _grey_clip(FRAMES)
    video = torch.from_numpy(np.repeat(grey[None], 3, axis=0).astype(np.float32) / 127.5 - 1)[None]
    assert torch.equal(read_video(wan / "control.gif")[None], video)  # a grey GIF and the PNG folder read alike
    assert torch.equal(read_video(wan / "control")[None], video)
    assert main(["generate", PROMPT, "--config", str(wan / "vace.json"), "--video", "cli.gif",
                 "--control", str(wan / "control"), *RUN]) == 0
    ours = _gif_frames(tmp_path / "cli.gif")
    (expert,) = WanVACEExpert.load_prompts(str(wan / "vace"), [PROMPT], video, max_sequence_length=L)
    latents, theirs = _api_gif(wan / "vace", expert, tmp_path / "api.gif")
    assert ours.shape == (FRAMES, SIDE, SIDE, 3) and np.array_equal(ours, theirs)
    (black,) = WanVACEExpert.load_prompts(str(wan / "vace"), [PROMPT], -torch.ones_like(video),
                                          max_sequence_length=L)
    assert float((_api_gif(wan / "vace", black, tmp_path / "k.gif")[0] - latents).abs().max()) > 1e-2
    # a batch job line, its files relative to the job file: the same clip; a rerun skips it
    (wan / "jobs.jsonl").write_text(json.dumps({"id": "clip", "prompt": PROMPT, "config": "vace.json",
                                                "video": "gif", "control": "control.gif", "sampler": "ancestral",
                                                "particles": 1, "steps": 2, "seed": 0}) + "\n")
    assert main(["batch", str(wan / "jobs.jsonl"), "--out", str(tmp_path / "b"), "-q", "--threads", "1"]) == 0
    assert np.array_equal(_gif_frames(tmp_path / "b" / "clip.gif"), theirs)
    assert main(["batch", str(wan / "jobs.jsonl"), "--out", str(tmp_path / "b"), "-q", "--threads", "1"]) == 0
    records = [json.loads(s) for s in (tmp_path / "b" / "manifest.0.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["status"] == "ok"  # the rerun found it finished: no second record


def test_an_off_size_first_frame_is_resized_to_the_entrys_size(wan, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING", logger="poegen.experts.wan"):
        assert main(["generate", PROMPT, "--config", str(wan / "i2v-32.json"), "--video", "v.gif", "--frames", "1",
                     "--first-frame", str(wan / "odd.png"), *RUN]) == 0
    assert _gif_frames(tmp_path / "v.gif").shape == (1, 32, 32, 3)
    assert any("odd.png is 40x40 pixels; resized to 32x32" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kind, extra, message", [
    ("i2v", ["--first-frame", "nope.png"], "first_frame nope.png (--first-frame): no such file (looked for {cwd}/nope.png)"),
    ("vace", ["--control", "none.gif"], "control none.gif (--control): no such file (looked for {cwd}/none.gif)"),
    ("i2v", ["--first-frame", "{wan}/odd.png"], "first frame {wan}/odd.png is 40x40 pixels; Wan needs sides that are "
                                                "multiples of 16: resize it (e.g. to 32x32), or set options height"),
    ("vace", ["--control", "{wan}/four.gif"], "control video {wan}/four.gif has 4 frames; Wan needs 4k + 1 (nearest: "
                                              "1 or 5): trim or extend the clip"),
    ("vace", ["--control", "{wan}/nine", "--frames", "5"], "control video {wan}/nine has 9 frames but num_frames "
                                                            "(--frames) is 5: give a clip of 5 frames, or leave --frames out"),
    ("t2v", ["--first-frame", "{wan}/first.png"], "a first frame (--first-frame) needs an image-to-video folder "
                                                   "(transformer in_channels 36); this is a text-to-video folder"),
    ("vace", ["--first-frame", "{wan}/first.png"], "this is a VACE folder, which takes a control video (--control)"),
    ("i2v", ["--control", "{wan}/control.gif"], "a control video (--control), mask or conditioning_scale needs a VACE "
                                                "folder (transformer with vace_layers); this is an image-to-video"),
    ("i2v", [], "an image-to-video folder needs the clip's first frame (--first-frame FILE"),
])
def test_bad_video_inputs_are_one_line_errors(wan, tmp_path, capsys, monkeypatch, kind, extra, message):
    monkeypatch.chdir(tmp_path)
    extra = [a.format(wan=wan) for a in extra]
    assert main(["generate", PROMPT, "--config", str(wan / f"{kind}.json"), "--video", "v.gif", *extra, *RUN]) == 2
    err = capsys.readouterr().err
    assert err.startswith("poegen: error: ") and err.count("\n") == 1, err
    assert message.format(cwd=tmp_path, wan=wan) in err, err
    assert not any(tmp_path.iterdir())


def test_video_inputs_need_a_video_model_and_mp4_needs_the_extra(wan, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = str(wan / "first.png")
    cases = [
        (["--expert", "sd:/no/such/sd", "--first-frame", first],
         "first_frame (--first-frame) is for a video model: an image-to-video Wan folder (--expert wan:PATH) with "
         "--video OUT.gif"),
        (["--video", "v.gif", "--control", str(wan / "control.gif")], "control (--control) is for a video model: "
                                                                       "a VACE Wan folder"),
        (["--config", str(wan / "i2v.json"), "--video", "v.gif", "--first-frame", first, "--control",
          str(wan / "control.gif")], "give first_frame (an image-to-video folder) or control (a VACE folder), not both"),
    ]
    try:  # with the video extra, a real MP4; without it any bytes do: the import fails before reading
        import imageio.v3 as iio
    except ImportError:
        iio = None
    mp4 = wan / "control.mp4"
    if iio is None:
        mp4.write_bytes(b"not read")
    elif not mp4.exists() or mp4.read_bytes() == b"not read":
        iio.imwrite(mp4, np.repeat(_grey_clip(FRAMES)[..., None], 3, axis=3), plugin="FFMPEG", fps=8)
    cases.append((["--config", str(wan / "vace.json"), "--video", "v.gif", "--control", str(mp4)],
                  f"control video {mp4}: reading .mp4 needs imageio with ffmpeg (imageio is not installed): pip "
                  "install 'poegen[video]'"))
    for i, (args, message) in enumerate(cases):
        with monkeypatch.context() as m:
            if i == len(cases) - 1:
                m.setitem(sys.modules, "imageio", None)  # the extra missing: an import of it fails
            assert main(["generate", PROMPT, *args, *RUN]) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (args, err)
    assert not any(tmp_path.iterdir())
    if iio is not None:  # with the extra, an MP4 control reads as its frames
        assert read_video(mp4).shape == (3, FRAMES, SIDE, SIDE)


def test_a_batch_line_naming_a_missing_control_is_refused_before_any_work(wan, tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": PROMPT, "config": str(wan / "vace.json"), "video": "gif",
                                "control": "missing.gif"}) + "\n")
    assert main(["batch", str(jobs), "--out", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"control 'missing.gif' not found (looked for {tmp_path / 'missing.gif'})" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_scene_drives_vace_by_its_simulated_depth_and_i2v_by_its_first_frame(wan, tmp_path, monkeypatch):
    """--scene with Wan folders: the scene is simulated once at the clip's frame times; a VACE folder follows the
    simulated depth video, an image-to-video folder starts from the scene's rendered first frame (each as the
    expert API given those inputs: the same GIF at the same seed), and the motion potentials join the product.
    A folder pair (VACE x image-to-video) makes one product with both experts."""
    from poegen.experts.motion import trajectory
    from poegen.families import build_product
    from poegen.experts.scene import load_scene
    from poegen.specs import from_physics
    from poegen.experts.physics import PhysicsExpert

    monkeypatch.chdir(tmp_path)
    scene = tmp_path / "roll.yaml"
    scene.write_text((ROOT_EXAMPLES / "roll_off.yaml").read_text() + "camera: {resolution: 32}\n")
    spec = load_scene(scene)
    traj = trajectory(spec, FRAMES, (FRAMES - 1) / spec.physics.duration)
    depth = traj.depth[None, None].expand(1, 3, -1, -1, -1) * 2 - 1
    text = spec.prompt
    assert main(["generate", "--scene", str(scene), "--config", str(wan / "vace.json"), "--video", "v.gif",
                 "--frames", str(FRAMES), *RUN]) == 0
    (vace,) = WanVACEExpert.load_prompts(str(wan / "vace"), [text], depth, max_sequence_length=L)
    assert np.array_equal(_gif_frames(tmp_path / "v.gif"), _api_gif(wan / "vace", vace, tmp_path / "va.gif")[1])
    assert main(["generate", "--scene", str(scene), "--config", str(wan / "i2v.json"), "--video", "i.gif",
                 "--frames", str(FRAMES), *RUN]) == 0
    (i2v,) = WanImageToVideoExpert.load_prompts(str(wan / "i2v"), [text], traj.images[:1], num_frames=FRAMES,
                                                max_sequence_length=L)
    assert np.array_equal(_gif_frames(tmp_path / "i.gif"), _api_gif(wan / "i2v", i2v, tmp_path / "ia.gif")[1])
    entries = [{"kind": "wan", "path": str(wan / k), "options": {"max_sequence_length": L}} for k in ("vace", "i2v")]
    product = build_product(from_physics(PhysicsExpert(spec)), entries, video=True, frames=FRAMES)
    kinds = {type(e).__name__ for e in product.experts}
    assert {"WanVACEExpert", "WanImageToVideoExpert"} <= kinds and product.fps == pytest.approx(1.0)
    assert {"motion-regions", "motion-trajectory"} <= {p.name for p in product.potentials}
    r = poegen.sample(product, sampler="poe", num_particles=2, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert product.decode(r.x[:1]).shape == (1, 3, FRAMES, SIDE, SIDE)
