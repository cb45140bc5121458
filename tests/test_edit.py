"""Editing: KnownPixels against the closed-form posterior, the replacement variant, and `poegen edit`."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import poegen
from poegen.cli import main
from poegen.experts.analytic import Gaussian, gaussian_posterior
from poegen.experts.known import KnownPixels

F64 = torch.float64


def _problem():
    g = torch.Generator().manual_seed(5)
    A = torch.randn(4, 4, generator=g, dtype=F64)
    m, C = torch.randn(4, generator=g, dtype=F64), A @ A.T / 4 + 0.3 * torch.eye(4, dtype=F64)
    y = torch.tensor([1.0, -0.5, 0.5, 2.0], dtype=F64)
    keep = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=F64)
    return m, C, y, keep


@pytest.mark.parametrize("sampler", ["smc", "poe"])
def test_known_pixels_posterior_is_the_closed_form(sampler):
    from tests.test_engine import errors_in_se

    from poegen.experts.analytic import GaussianLikelihood

    m, C, y, keep = _problem()
    noise = 1.0
    known = KnownPixels(y, keep, noise)
    product = poegen.Product([Gaussian(m, C)], potentials=[known])
    select = torch.eye(4, dtype=F64)[keep.bool()]  # the kept coordinates
    R = noise ** 2 * torch.eye(2, dtype=F64)
    x = torch.randn(6, 4, dtype=F64)
    assert torch.allclose(known.log_potential(x), GaussianLikelihood(y[keep.bool()], R, A=select).log_potential(x))
    mean, cov, log_Z = gaussian_posterior(m, C, y[keep.bool()], R, A=select)
    r = poegen.sample(product, sampler=sampler, num_particles=2000, num_steps=50, generator=torch.Generator().manual_seed(0),
                      dtype=F64)
    assert max(errors_in_se(r.x, r.log_w, mean, cov)) < 4
    assert abs(r.log_Z - float(log_Z)) < 0.15  # KnownPixels is normalised: log Z is the kept pixels' evidence


def test_replacing_the_known_pixels_pins_them_to_the_image():
    m, C, y, keep = _problem()
    product = poegen.Product([Gaussian(m, C)], potentials=[KnownPixels(y, keep, 0.4)])
    r = poegen.sample(product, sampler="smc", num_particles=500, num_steps=30, generator=torch.Generator().manual_seed(0),
                      dtype=F64, replace_known=True)
    kept = r.x[:, keep.bool()]
    assert (kept - y[keep.bool()]).abs().max() < 0.05  # re-noised to the last level, then denoised
    assert r.x[:, ~keep.bool()].std(0).min() > 0.1  # the free coordinates still vary
    with pytest.raises(ValueError, match="replace_known=True needs a known-pixels potential"):
        poegen.sample(poegen.Product([Gaussian(m, C)]), num_particles=4, num_steps=2, replace_known=True)


def _png(path, array):
    Image.fromarray(array).save(path)
    return str(path)


@pytest.fixture(scope="module")
def inpaint_folder(tmp_path_factory):
    from helpers import tiny_sd_inpaint_folder
    return str(tiny_sd_inpaint_folder(tmp_path_factory.mktemp("inpaint")))


def test_edit_with_a_tiny_sd_inpaint_model_through_the_cli(inpaint_folder, tmp_path, capsys):
    rng = np.random.default_rng(0)
    image = _png(tmp_path / "in.png", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    box = np.zeros((16, 16), np.uint8)
    box[4:12, 4:12] = 255
    mask = _png(tmp_path / "mask.png", box)
    out = tmp_path / "edited.png"
    assert main(["edit", image, "a red ball", "--mask", mask, "--expert", f"sd-inpaint:{inpaint_folder}",
                 "--guidance", "3", "--steps", "2", "--particles", "2", "-q", "--out", str(out)]) == 0
    meta = json.loads(Image.open(out).text["poegen"])
    assert "sd-inpaint[a red ball]" in meta["experts"] and "known-pixels" in meta["potentials"]
    assert meta["background_mse"] >= 0 and "background MSE outside the mask" in capsys.readouterr().out


def test_edit_refuses_sizes_and_masks_that_do_not_fit(tmp_path, capsys):
    big = _png(tmp_path / "big.png", np.full((20, 20, 3), 230, np.uint8))
    box = np.zeros((20, 20), np.uint8)
    box[5:10, 5:10] = 255
    mask20 = _png(tmp_path / "m20.png", box)
    args = ["--steps", "1", "--particles", "1", "-q"]  # the shapes world: 32 x 32 images
    assert main(["edit", big, "a red ball", "--mask", mask20, *args, "--out", str(tmp_path / "a.png")]) == 2
    assert "the image is 20x20; this family makes 32x32 images: resize it, or pass --resize" in capsys.readouterr().err
    assert main(["edit", big, "a red ball", "--mask", mask20, "--resize", *args, "--out", str(tmp_path / "b.png")]) == 0
    assert Image.open(tmp_path / "b_raw.png").size == (32, 32)
    small = _png(tmp_path / "m16.png", np.full((16, 16), 255, np.uint8))
    assert main(["edit", big, "a red ball", "--mask", small, *args]) == 2
    assert "is 16x16, the image 20x20" in capsys.readouterr().err
    empty = _png(tmp_path / "empty.png", np.zeros((20, 20), np.uint8))
    assert main(["edit", big, "a red ball", "--mask", empty, *args]) == 2
    assert "is empty" in capsys.readouterr().err
    assert main(["edit", big, "a red ball", *args]) == 2
    assert "exactly one of mask or scene" in capsys.readouterr().err


def test_a_scene_edit_drops_the_new_object_onto_the_old_ones(tmp_path, capsys):
    from poegen.compare import judge_edit
    from poegen.edit import load_image
    from poegen.specs import edit_layout
    from poegen.experts.physics import PhysicsExpert
    from poegen.experts.scene import parse_scene

    old = [{"name": "box", "shape": "box", "colour": "blue", "size": "large", "position": [0.0, 1.0]}]
    ball = {"name": "ball", "shape": "ball", "colour": "red", "position": [0.05, 3.5], "new": True}
    image = PhysicsExpert(parse_scene({"objects": old})).image
    layout = edit_layout(image, scene=parse_scene({"objects": old + [ball]}))
    box, red = layout.objects
    assert box.known and not red.known and layout.relations == [(1, "on", 0)]
    assert abs(red.centre(32)[1] - 16.5) < 1  # on top of the box (its top edge is at row 20)
    mask = layout.edit.mask
    assert mask[16, 16] == 1 and mask[24, 16] == 0  # the ball's footprint, dilated; not the box
    product = poegen.build_product(layout)
    assert product.names == ["shapes[null]", "shapes[small red ball at (15.7, 16.5)]"]  # the box is not redrawn
    r = poegen.sample(product, num_particles=4, num_steps=8, generator=torch.Generator().manual_seed(0),
                      replace_known=True, select="best")
    assert judge_edit(r.x[0], layout) == {"present": True, "relation": True, "exact": True}
    assert judge_edit(image, layout)["present"] is False  # the unedited image has no ball
    spec = tmp_path / "drop.yaml"
    spec.write_text(json.dumps({"objects": old + [dict(ball, position=[0.0, 1.5])]}))
    src = tmp_path / "in.png"
    Image.fromarray(((image.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)).save(src)
    assert load_image(src).shape == (3, 32, 32)
    assert main(["edit", str(src), "--scene", str(spec), "-q", "--out", str(tmp_path / "x.png")]) == 2
    assert "a new object may not start inside one already in the image" in capsys.readouterr().err


def test_a_batch_job_edits_an_image_and_compare_takes_an_edit_spec(tmp_path):
    from poegen import compare
    from poegen.batch import run_batch

    root = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples" / "edits"
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "drop", "image": str(root / "box.png"), "scene": str(root / "drop_ball.yaml"),
                                "steps": 3, "particles": 2}))
    assert run_batch(jobs, tmp_path / "out", progress=False) == {"done": 1, "skipped": 0, "failed": 0}
    meta = json.loads(Image.open(tmp_path / "out" / "drop.png").text["poegen"])
    assert meta["background_mse"] < 1e-3 and meta["sampler_options"]["replace_known"] is True
    spec = tmp_path / "edit.yaml"
    spec.write_text(json.dumps({"image": str(root / "box.png"), "scene": str(root / "drop_ball.yaml")}))
    rows, _ = compare.run([str(spec)], ["poe"], 1, 2, 1, 3, progress=False)
    assert rows[0].metrics["bg_mse"] < 1e-3 and rows[0].present is not None
