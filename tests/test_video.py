"""Video through the one route: a tiny Wan folder (as tests/test_wan.py builds it) behind --video, potentials scored
per frame (the sum over frames enters the weights), GIF and MP4 outputs, and the errors of the video options."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from poegen.pipeline import display_scale
import torch

import poegen
from poegen.cli import main
from poegen.product import PerFrame

from helpers import tiny_clip_folder
from test_wan import TINY, _common

FRAMES, SIDE, L = 5, 32, 16
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    """A tiny text-to-video Wan folder saved by WanPipeline, and a config naming it at 32 x 32 pixels."""
    from diffusers import WanPipeline, WanTransformer3DModel

    root = tmp_path_factory.mktemp("video")
    torch.manual_seed(0)
    WanPipeline(transformer=WanTransformer3DModel(in_channels=16, num_layers=2, **TINY), **_common()
                ).save_pretrained(root / "t2v")
    entry = {"kind": "wan", "path": str(root / "t2v"), "guidance": 3.0,
             "options": {"height": SIDE, "width": SIDE, "max_sequence_length": L}}
    (root / "wan.json").write_text(json.dumps({"experts": [entry]}))
    return root


def _cli(args, cwd):
    """``poegen`` in a fresh process (one thread)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "poegen", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


FAST = ["--particles", "2", "--steps", "2", "--threads", "1", "-q"]


def test_generate_video_writes_a_gif_of_the_clip(wan, tmp_path):
    from PIL import Image

    r = _cli(["generate", "a red ball", "--config", str(wan / "wan.json"), "--video", "out.gif", "--frames",
              str(FRAMES), "--fps", "10", *FAST], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "wrote out.gif" in r.stdout and not (tmp_path / "poegen.png").exists()
    gif = Image.open(tmp_path / "out.gif")
    big = SIDE * display_scale(SIDE)  # written at display size, the native frames beside it
    assert gif.n_frames == FRAMES and gif.size == (big, big)  # --frames reached the model (its default is 81)
    assert Image.open(tmp_path / "out_raw.gif").size == (SIDE, SIDE)
    assert gif.info["duration"] == 100
    meta = json.loads(gif.info["comment"])
    assert meta["job"]["video"] == "gif" and meta["job"]["frames"] == FRAMES and meta["nfe"]
    assert len(meta["experts"]) == 2  # the prompt's expert times the empty prompt's: guidance as a product
    frames = []
    for i in range(FRAMES):
        gif.seek(i)
        frames.append(torch.from_numpy(np.asarray(gif.convert("RGB"), dtype=np.float32)))
    assert max(float((frames[i] - frames[0]).abs().mean()) for i in range(1, FRAMES)) > 0  # frames of a clip, not one


def test_mp4_is_written_with_the_video_extra_or_refused_naming_it(wan, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["generate", "a red ball", "--config", str(wan / "wan.json"), "--video", "out.mp4", "--frames", "5", *FAST]
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "imageio", None)  # the extra missing (an import of it fails): refused before sampling
        assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'poegen[video]'" in err and "imageio" in err
    assert not any(tmp_path.iterdir())
    iio = pytest.importorskip("imageio.v3")
    pytest.importorskip("imageio_ffmpeg")
    assert main(args) == 0
    clip = iio.imread(tmp_path / "out.mp4", plugin="FFMPEG")
    big = SIDE * display_scale(SIDE)
    assert clip.shape == (5, big, big, 3)
    assert iio.imread(tmp_path / "out_raw.mp4", plugin="FFMPEG").shape == (5, SIDE, SIDE, 3)
    assert iio.immeta(tmp_path / "out.mp4", plugin="FFMPEG")["fps"] == 16.0


@pytest.mark.parametrize("args, message", [
    (["--frames", "8"], "num_frames 8 must be 4k + 1 (1, 5, 9, ..., 81); nearest: 5 or 9 (set by --frames"),
    (["--frames", "0"], "frames 0 must be >= 1"),
    (["--video", "out.avi"], "--video out.avi: name a .gif or .mp4 file"),
    (["--fps", "-2"], "fps -2.0: expected a positive number"),
])
def test_bad_video_options_are_one_line_errors(wan, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    base = ["generate", "a red ball", "--expert", f"wan:{wan / 't2v'}", "--video", "out.gif", *FAST]
    assert main(base + args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_video_kinds_and_image_kinds_do_not_mix(wan, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = [
        (["a red ball", "--expert", "sd:/no/such/sd", "--video", "v.gif"], "kind sd makes images; --video needs"),
        (["a red ball", "--expert", f"wan:{wan / 't2v'}"], "kind wan makes videos; write them with --video"),
        (["a red ball", "--frames", "5"], "frames 5 needs a scene to simulate"),
        (["a red ball", "--fps", "8"], "fps is for a video"),
    ]
    for args, message in cases:
        assert main(["generate", *args, *FAST]) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (args, err)
    assert not any(tmp_path.iterdir())


def _frame_product(wan, potential, **kw):
    from poegen.experts.wan import WanExpert, wan_decoder

    (expert,) = WanExpert.load_prompts(str(wan / "t2v"), ["a red ball"], num_frames=FRAMES, height=SIDE, width=SIDE,
                                       max_sequence_length=L)
    return poegen.Product([expert], potentials=[PerFrame(potential, **kw)], lambdas=[2.0], schedule="linear",
                          decode=wan_decoder(str(wan / "t2v")))


def _frame_score(images):
    """A per-image score that depends on where the image sits in the batch's frame order (red minus blue)."""
    return images[:, 0].mean((1, 2)) - images[:, 2].mean((1, 2))


def test_per_frame_potential_sees_frames_and_its_sum_enters_the_weights(wan):
    seen = []

    def score(images):
        seen.append(tuple(images.shape))
        return _frame_score(images)

    product = _frame_product(wan, poegen.potential(score))
    n = 3
    r = poegen.sample(product, sampler="ais", proposal="euler", mcmc_steps=0, num_particles=n, num_steps=2,
                      generator=torch.Generator().manual_seed(0))
    assert set(seen) == {(n * FRAMES, 3, SIDE, SIDE)}  # every evaluation: the clips' frames folded into the batch
    # never resampled, no MCMC, a(0) = 0: log_w is lambda times the reward of the last level's x0_hat (the
    # particles' x returned)
    with torch.no_grad():
        clips = (product.decode(r.particles.x) + 1) / 2  # poegen.potential hands f images in [0, 1]
    direct = torch.tensor([sum(float(_frame_score(clips[i:i + 1, :, f])) for f in range(FRAMES)) for i in range(n)])
    assert clips.shape == (n, 3, FRAMES, SIDE, SIDE)
    assert torch.allclose(r.log_w.double(), 2.0 * direct.double(), atol=1e-5), (r.log_w, direct)
    mean = _frame_product(wan, poegen.potential(_frame_score), reduce="mean").potentials[0].log_potential(2 * clips - 1)
    assert torch.allclose(mean, direct.float() / FRAMES, atol=1e-5)


def test_clip_questions_score_every_frame_in_one_call(wan, tmp_path):
    """The named route wraps each potential per frame; questions on one CLIP keep one vision call for all frames."""
    from poegen.families import build_product
    from poegen.specs import from_prompt

    clip = tiny_clip_folder(tmp_path)
    entry = {"kind": "wan", "path": str(wan / "t2v"), "options": {"height": SIDE, "width": SIDE,
                                                                    "max_sequence_length": L}}
    product = build_product(from_prompt("a red ball and a blue box", compose=True), [entry], [f"clip:{clip}"],
                            video=True, frames=FRAMES)
    assert product.shape == (16, 2, 4, 4) and len(product.potentials) == 2
    assert all(isinstance(p, PerFrame) for p in product.potentials)
    calls = []
    vision = product.potentials[0].potential.model.vision_model
    vision.register_forward_hook(lambda m, a, kw, out: calls.append(kw.get("pixel_values", a[0] if a else None).shape[0]),
                                 with_kwargs=True)
    x0 = torch.randn(2, *product.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        total, per = product.log_potentials(x0, 1.0)
        assert calls == [2 * FRAMES]
        clips = product.decode(x0)
        for j, p in enumerate(product.potentials):
            direct = torch.stack([sum(p.potential.log_potential(clips[i:i + 1, :, f]) for f in range(FRAMES))[0]
                                  for i in range(2)])
            assert torch.allclose(per[j], direct, atol=1e-4)
    assert torch.allclose(total, per.sum(0))


def test_batch_items_write_videos_and_resume(wan, tmp_path):
    from PIL import Image

    from poegen.batch import run_batch

    item = {"id": "v", "prompt": "a red ball", "config": str(wan / "wan.json"), "video": "gif", "frames": FRAMES,
            "particles": 2, "steps": 2}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(item) + "\n" + json.dumps({**item, "id": "bad", "video": "avi"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:2: video 'avi': expected gif or mp4"):
        run_batch(bad, tmp_path / "out", progress=False)  # checked before any item runs
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps(item) + "\n")
    counts = run_batch(jobs, tmp_path / "out", progress=False)
    assert counts == {"done": 1, "skipped": 0, "failed": 0}
    assert Image.open(tmp_path / "out" / "v.gif").n_frames == FRAMES
    records = [json.loads(line) for f in (tmp_path / "out").glob("manifest*.jsonl") for line in f.read_text().split("\n")
               if line]
    assert {r["id"]: r.get("files") for r in records if r["status"] == "ok"} == {"v": ["v.gif"]}
    assert run_batch(jobs, tmp_path / "out", progress=False)["skipped"] == 1  # the clip is there: not run again
