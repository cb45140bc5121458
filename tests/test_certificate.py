"""Certified samples (poegen.certify): a sample is certified when every potential that declares a
``certify_threshold`` reaches it; the route writes the verdict into the image's metadata, the command line warns
on an uncertified image and --require-certified refuses it (exit 6, nothing written)."""
import json
import math

import numpy as np
import pytest
import torch

import poegen
from poegen import defaults
from poegen.certificate import Certificate, certify
from poegen.cli import main
from poegen.experts.analytic import Gaussian
from poegen.product import PerFrame, Product

from helpers import tiny_clip_folder, tiny_sd_folder, tiny_vlm_folder


class Fixed:
    """A potential whose value per sample is the sample's mean pixel, with a threshold (or none)."""

    def __init__(self, name, threshold=None):
        self.name = name
        if threshold is not None:
            self.certify_threshold = threshold

    def log_potential(self, x0):
        return x0.flatten(1).mean(1)


def _product(*potentials, lambdas=None):
    return Product([Gaussian(torch.zeros(4), torch.eye(4))], potentials=list(potentials), lambdas=lambdas)


def test_certified_when_every_threshold_is_met_and_the_unmet_are_named():
    product = _product(Fixed("above -1", -1.0), Fixed("above 0", 0.0), Fixed("no say"))
    x = torch.stack([torch.full((4,), v) for v in (0.5, -0.5, -2.0)])
    cert = certify(product, x)
    assert cert.certified.tolist() == [True, False, False]
    assert cert.unmet == [[], ["above 0"], ["above -1", "above 0"]]
    assert cert.checked == ["above -1", "above 0"] and cert.status(0) is True and cert.status(1) is False
    assert cert.values.shape == (2, 3) and cert.thresholds == [-1.0, 0.0]
    # a SampleResult is read through its x; a potential with weight 0 takes no part
    r = poegen.sample(product, num_particles=3, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert certify(product, r).certified.shape == (3,)
    off = _product(Fixed("above 0", 0.0), Fixed("above -1", -1.0), lambdas=[0.0, 1.0])
    assert certify(off, x).checked == ["above -1"]


def test_a_product_with_no_certifying_potential_is_not_checked():
    for product in (_product(), _product(Fixed("a score"))):
        cert = certify(product, torch.zeros(2, 4))
        assert not cert.is_checked and cert.status(0) is None and not cert.certified.any()
        assert "no potential" in cert.describe(0)


def test_a_clip_is_certified_when_every_frame_is():
    class Frames:  # (N, C, F, H, W) clips through a per-frame potential: frame means
        name = "frame mean"
        certify_threshold = 0.0

        def log_potential(self, x0):
            return x0.flatten(1).mean(1)

    product = Product([Gaussian(torch.zeros(4), torch.eye(4))], potentials=[PerFrame(Frames(), "mean")])
    good = torch.ones(1, 1, 3, 2, 2)
    bad = good.clone()
    bad[0, :, 1] = -0.5  # one frame of three wrong: the clip's mean is still above 0, the frame is not
    assert float(product.potentials[0].log_potential(bad)[0]) > 0
    cert = certify(product, torch.cat([good, bad]))
    assert cert.certified.tolist() == [True, False] and cert.unmet[1] == ["frame mean/frame"]


# ---- the shapes world: its scorer and footprint on rendered scenes whose truth is known ----------------------------

def _scene(*objects):
    """A rendered image (1, 3, 32, 32) of small objects resting on the floor at world x, and its Scene."""
    from poegen.experts.shapes.render import render
    from poegen.experts.shapes.world import SIZES, Scene, SceneObject

    scene = Scene(tuple(SceneObject(shape, colour, "small", x, SIZES["small"] / 2) for shape, colour, x in objects))
    return torch.from_numpy(render(scene)[0])[None], scene


def test_the_shapes_scorer_certifies_a_right_scene_and_names_the_wrong_question():
    from poegen.families import shapes_product
    from poegen.specs import shapes_layout

    right, _ = _scene(("ball", "red", -2.0), ("box", "blue", 0.0))
    wrong, _ = _scene(("ball", "green", -2.0), ("box", "blue", 0.0))
    product = shapes_product(shapes_layout("a red ball and a blue box"), footprint=False)
    assert certify(product, right, decoded=True).status(0) is True
    cert = certify(product, wrong, decoded=True)
    assert cert.status(0) is False and "vlm[is there a red ball?]" in cert.unmet[0], cert.unmet
    assert "vlm[is there a blue box?]" not in cert.unmet[0]
    # an object nobody asked for: the count question says so
    extra, _ = _scene(("ball", "red", -2.0), ("box", "blue", 0.0), ("ball", "green", 2.0))
    cert = certify(product, extra, decoded=True)
    assert cert.status(0) is False and any("balls" in n for n in cert.unmet[0]), cert.unmet


def test_the_footprint_is_met_without_stray_pixels_and_unmet_with_them():
    from poegen.experts.shapes.footprint import footprint
    from poegen.experts.shapes.render import centroid, render
    from poegen.experts.shapes.vocab import parse_phrase

    alone, scene = _scene(("ball", "red", -1.0))
    mask = render(scene)[1][0]
    pot = footprint([centroid(mask)], [parse_phrase("red ball")])
    assert pot.certify_threshold == pytest.approx(-pot.per_pixel * defaults.CERTIFY_STRAY_PX)
    product = _product(pot)
    assert certify(product, alone, decoded=True).status(0) is True
    crowded, _ = _scene(("ball", "red", -1.0), ("box", "blue", 2.0))
    cert = certify(product, crowded, decoded=True)
    assert cert.status(0) is False and cert.unmet[0] == ["footprint"]


# ---- named models: VQAScore certifies at CERTIFY_P unless its entry says otherwise, a score only when given -----

@pytest.fixture(scope="module")
def named(tmp_path_factory):
    root = tmp_path_factory.mktemp("named")
    return {"sd": str(tiny_sd_folder(root / "sd")), "clip": tiny_clip_folder(root / "clip"),
            "vlm": tiny_vlm_folder(root / "vlm")}


def test_named_model_potentials_certify_by_their_configured_thresholds(named):
    from poegen.specs import from_prompt

    images = torch.rand(2, 3, 16, 16) * 2 - 1

    def build(*potentials):
        return poegen.build_product(from_prompt("a red ball"), experts=[f"sd:{named['sd']}"],
                                    potentials=list(potentials))

    # a clip score has no natural threshold: not checked unless its entry gives one
    assert not certify(build(f"clip:{named['clip']}"), images, decoded=True).is_checked
    clip = build({"kind": "clip", "path": named["clip"]}).potentials[0]
    with torch.no_grad():
        score = clip.log_potential(images)
    low, high = float(score.min()) - 1, float(score.max()) + 1
    assert certify(build({"kind": "clip", "path": named["clip"], "options": {"certify": low}}), images,
                   decoded=True).certified.all()
    cert = certify(build({"kind": "clip", "path": named["clip"], "options": {"certify": high}}), images, decoded=True)
    assert not cert.certified.any() and cert.unmet[0] == ["clip[a red ball]"]
    # VQAScore: P(Yes) >= CERTIFY_P by default (a random tiny VLM is far from sure), or the entry's probability
    vqa = build(f"vqa:{named['vlm']}")
    assert vqa.potentials[0].certify_threshold == pytest.approx(math.log(defaults.CERTIFY_P))
    assert certify(vqa, images, decoded=True).unmet[0] == ["vqa[a red ball]"]
    sure = build({"kind": "vqa", "path": named["vlm"], "options": {"certify": 1e-12}})
    assert certify(sure, images, decoded=True).certified.all()
    off = build({"kind": "vqa", "path": named["vlm"], "options": {"certify": False}})
    assert not certify(off, images, decoded=True).is_checked
    with pytest.raises(ValueError, match=r"potentials\[0\].options.certify 2: a vqa potential is a probability"):
        build({"kind": "vqa", "path": named["vlm"], "options": {"certify": 2}})


# ---- the route and the command line ------------------------------------------------------------------------------

FAST = ["-q", "--particles", "2", "--steps", "3", "--threads", "1"]


def _meta(path):
    from PIL import Image
    return json.loads(Image.open(path).text["poegen"])


def _never_met(monkeypatch):
    """Every scorer question unmet: log P <= 0 never reaches a threshold above 0."""
    from poegen.experts.shapes.scorer import ShapesVLMExpert
    monkeypatch.setattr(ShapesVLMExpert, "certify_threshold", 1.0)


def test_an_uncertified_image_is_written_with_one_warning_line(tmp_path, capsys, monkeypatch):
    _never_met(monkeypatch)
    out = tmp_path / "x.png"
    assert main(["generate", "a red ball", *FAST, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"poegen: warning: {out} is not certified: vlm[is there a red "
                                                   "ball?]"), err
    meta = _meta(out)
    assert meta["certified"] is False and "vlm[is there a red ball?]" in meta["unmet"]
    assert _meta(tmp_path / "x_raw.png")["certified"] is False


def test_require_certified_exits_6_and_writes_nothing(tmp_path, capsys, monkeypatch):
    _never_met(monkeypatch)
    out = tmp_path / "x.png"
    assert main(["generate", "a red ball", *FAST, "--out", str(out), "--require-certified"]) == 6
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"poegen: error: {out} is not certified: vlm[is there a red"), lines
    assert "nothing written" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_certified_image_says_so_in_its_metadata_and_the_route_returns_it(tmp_path, capsys):
    from poegen.job import Job
    from poegen.pipeline import run

    out = tmp_path / "x.png"
    written = run(Job(prompt="a red ball", seed=0), out, scale=1)  # the defaults: 8 particles, 20 levels
    assert written == [out] and written.certified == {out: (True, [])} and written.uncertified() == []
    assert _meta(out)["certified"] is True and "unmet" not in _meta(out)
    # --require-certified lets a certified image through, and the metadata says it again
    assert main(["generate", "a red ball", "-q", "--threads", "1", "--out", str(tmp_path / "y.png"),
                 "--require-certified"]) == 0
    assert capsys.readouterr().err == "" and _meta(tmp_path / "y.png")["certified"] is True


def test_batch_records_the_certificate_and_a_required_one_fails_the_item(tmp_path, monkeypatch):
    from poegen.batch import read_manifest, run_batch

    _never_met(monkeypatch)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps({"id": i, "prompt": "a red ball", "steps": 2, "particles": 2, **extra})
                              for i, extra in (("free", {}), ("strict", {"require_certified": True}))) + "\n")
    counts = run_batch(jobs, tmp_path / "out", progress=False)
    assert counts["done"] == 1 and counts["failed"] == 1
    records = read_manifest(tmp_path / "out")
    assert records["free"]["certified"] is False and "vlm[is there a red ball?]" in records["free"]["unmet"]["free.png"]
    assert records["strict"]["status"] == "failed" and "NotCertified" in records["strict"]["error"]
    assert not list((tmp_path / "out").glob("strict*.png"))


def test_the_rates_script_thresholds_questions_at_tau_and_the_rest_at_their_own():
    from helpers import load_script

    rates = load_script("certificate_rates")
    values = {"vlm[is there a red ball?]": math.log(0.85), "footprint": -1.0}
    thresholds = {"vlm[is there a red ball?]": math.log(0.9), "footprint": -2.0}
    assert rates.certified(values, thresholds, 0.8) and not rates.certified(values, thresholds, 0.9)
    assert not rates.certified({**values, "footprint": -3.0}, thresholds, 0.5)
