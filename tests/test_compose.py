"""Composition with named models: shared backbones and scorers, layouts, scene specs, compare, batch (tiny models)."""
import json
import math
from pathlib import Path

import pytest
import torch

import poegen
from poegen.cli import main
from poegen.experts import cache
from poegen.families import named_product as build
from poegen.layout import Layout, LayoutObject
from poegen.specs import from_prompt, load_layout, split_prompt

from helpers import (tiny_clip_folder, tiny_controlnet_folder, tiny_flux_folder, tiny_owlv2_folder,
                     tiny_sd_folder, tiny_vlm_folder)


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    sd = tiny_sd_folder(root / "sd")
    return {"sd": str(sd), "clip": tiny_clip_folder(root / "clip"), "owl": tiny_owlv2_folder(root / "owl"),
            "controlnet": tiny_controlnet_folder(root / "cn", sd), "flux": str(tiny_flux_folder(root / "flux")),
            "vlm": tiny_vlm_folder(root / "vlm")}


def _count_calls(module):
    calls = []
    return calls, module.register_forward_hook(lambda *a: calls.append(1))


@pytest.mark.parametrize("micro_batch", [None, 3])
def test_two_sd_entries_on_one_folder_load_one_unet_and_share_each_call(models, monkeypatch, tmp_path, micro_batch):
    from diffusers import UNet2DConditionModel

    loads = []
    original = UNet2DConditionModel.from_pretrained.__func__
    monkeypatch.setattr(UNet2DConditionModel, "from_pretrained",
                        classmethod(lambda cls, *a, **k: loads.append(1) or original(cls, *a, **k)))
    options = {} if micro_batch is None else {"options": {"micro_batch": micro_batch}}
    cfg = tmp_path / "two.yaml"
    cfg.write_text(json.dumps({"experts": [{"kind": "sd", "path": models["sd"], "prompt": "a red ball", **options},
                                           {"kind": "sd", "path": models["sd"], "prompt": "a blue box", **options}]}))
    from poegen.experts.registry import load_config
    spec = load_config(cfg)
    product = build("unused", spec["experts"], guidance=3.0)
    assert len(loads) == 1
    # the two empty-prompt partners are one expert: three experts, weights 3 + 3 + 2 * (1 - 3)
    assert product.names == ["sd[a red ball]", "sd[]", "sd[a blue box]"] and product.weights == [3.0, -4.0, 3.0]
    calls, hook = _count_calls(product.experts[0].unet)
    N = 4
    x, sigma = torch.randn(N, 4, 8, 8), torch.tensor(1.3)
    product.evaluate(x, sigma, product.total_weight((4, 8, 8), "cpu", torch.float32))
    hook.remove()
    assert len(calls) == math.ceil(3 * N / (micro_batch or 3 * N))


def test_four_clip_questions_on_eight_particles_embed_each_image_once(models):
    product = build(from_prompt("a red ball and a blue box, a ball on a box", compose=True), [f"sd:{models['sd']}"],
                    [f"clip:{models['clip']}"])
    assert product.potential_names == ["clip[a red ball]", "clip[a blue box]", "clip[a ball]", "clip[a box]",
                                       "clip[a ball on a box]"]
    model = product.potentials[0].model
    assert all(p.model is model for p in product.potentials)  # one CLIP for every question
    images = torch.rand(8, 3, 16, 16) * 2 - 1
    singles = torch.stack([p.log_potential(images) for p in product.potentials[:4]])
    calls, hook = _count_calls(model.vision_model)
    batched = type(product.potentials[0]).log_potential_batch(product.potentials[:4], images)
    hook.remove()
    assert len(calls) == 1 and torch.allclose(batched, singles, atol=1e-5)
    calls, hook = _count_calls(model.vision_model)
    product.log_potentials(torch.randn(8, 4, 8, 8), 1.0)  # the product decodes, then groups five questions in one call
    hook.remove()
    assert len(calls) == 1


def test_vqa_questions_of_unequal_length_batch_like_single_calls(models):
    from poegen.experts.vlm import VQAScore

    qs = [VQAScore.from_pretrained(models["vlm"], t, micro_batch=micro) for t, micro in
          (("a red ball", 5), ("a blue box", 5), ("a red ball or a blue box", 5))]
    assert qs[0].model is qs[2].model and qs[0].input_ids.shape[1] < qs[2].input_ids.shape[1]
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    singles = torch.stack([q.log_potential(images) for q in qs])
    calls, hook = _count_calls(qs[0].model)
    batched = VQAScore.log_potential_batch(qs, images)
    hook.remove()
    assert len(calls) == math.ceil(3 * 4 / 5) and torch.allclose(batched, singles, atol=1e-4)


def test_compose_splits_prompts_like_the_shapes_world():
    layout = split_prompt("a cat on a mat, a dog and a tree left of a house")
    assert [o.phrase for o in layout.objects] == ["a cat", "a mat", "a dog", "a tree", "a house"]
    assert layout.relations == [(0, "on", 1), (3, "left of", 4)]
    assert layout.texts()[-2:] == ["a cat on a mat", "a tree left of a house"]
    assert from_prompt("a cat", questions=["is it a cat?"]).texts() == ["is it a cat?"]
    assert from_prompt("a cat and a dog").objects == []  # without compose the prompt stays whole
    parts = from_prompt("anything", parts=["a cat", "a dog"])
    assert [o.phrase for o in parts.objects] == ["a cat", "a dog"]


def test_regions_tile_the_image_and_boxes_cover_their_cells():
    layout = Layout("a table", [LayoutObject("a ball", box=(0.0, 0.0, 0.5, 0.5)),
                                LayoutObject("a box", box=(0.25, 0.25, 0.75, 0.75)), LayoutObject("a cup")])
    background, regions = layout.regions(4, 4)
    assert regions[2] is None  # no box: the phrase acts everywhere
    assert torch.allclose(background + regions[0] + regions[1], torch.ones(4, 4))
    assert regions[0][0, 0] == 1 and regions[0][1, 1] == 0.5 and regions[1][1, 1] == 0.5 and background[1, 1] == 0
    assert regions[0][3, 3] == 0 and background[3, 3] == 1
    half = LayoutObject("x", box=(0.0, 0.0, 0.375, 1.0)).region(1, 4)  # 1.5 of 4 columns
    assert torch.allclose(half, torch.tensor([[1.0, 0.5, 0.0, 0.0]]))


def test_layout_product_for_named_models_is_regional_and_guided(models):
    layout = load_layout("examples/layout_two_objects.yaml")
    product = build(layout, [f"sd:{models['sd']}"], [f"detector:{models['owl']}"], guidance=2.0)
    assert product.names == ["sd[a red ball and a blue box on a table]", "sd[a red ball]", "sd[a blue box]", "sd[]"]
    assert product.weights == [2.0, 2.0, 2.0, -1.0]
    B = product.total_weight((4, 8, 8), "cpu", torch.float32)
    assert torch.allclose(B, torch.ones_like(B))  # regions tile: the product stays a guided distribution
    ball = product.masks[1][0]
    assert ball[:, 5:].eq(0).all() and ball[4, 1] == 1  # the ball's expert acts only inside its box (left half)
    assert [p.box for p in product.potentials] == [o.box for o in layout.objects]


def test_generate_a_scene_with_sd_depth_controlnet_and_a_detector(models, tmp_path):
    from PIL import Image

    from poegen.job import Job
    from poegen.pipeline import products

    cfg = tmp_path / "scene.yaml"
    cfg.write_text(json.dumps({
        "experts": [{"kind": "controlnet", "path": models["controlnet"], "guidance": 2.0,
                     "options": {"base": models["sd"], "conditioning_scale": 0.8}}],
        "potentials": [{"kind": "detector", "path": models["owl"]}, {"kind": "clip", "path": models["clip"]}]}))
    (label, product), = products(Job(scene="examples/stacking.yaml", config=str(cfg)))
    assert type(product.experts[0]).__name__ == "ControlNetExpert"
    assert len({e.batch_key for e in product.experts}) == 1  # every regional expert on one UNet + ControlNet
    control = product.experts[0].control_image
    assert control.shape == (1, 3, 16, 16) and control.max() > 0.7  # the simulated depth map, at pixel size
    names = [n.split("[")[1].rstrip("]") for n in product.names]
    from poegen.experts.physics import PhysicsExpert
    from poegen.experts.scene import load_scene
    physics = PhysicsExpert(load_scene("examples/stacking.yaml"))
    ball_mask = torch.nn.functional.adaptive_avg_pool2d(physics.masks[1][None, None].float(), (8, 8))[0, 0]
    ball = product.masks[names.index("a small red ball")][0]
    assert torch.equal(ball > 0, ball_mask > 0) and ball.sum() > 0  # the ball's expert: inside its simulated mask
    assert [p.phrase for p in product.potentials[:2]] == ["a large blue box", "a small red ball"]
    assert product.potentials[1].box is not None  # the detector's target: the simulated box
    out = tmp_path / "scene.png"
    assert main(["generate", "--scene", "examples/stacking.yaml", "--config", str(cfg), "--steps", "2",
                 "--particles", "2", "-q", "--out", str(out)]) == 0
    meta = json.loads(Image.open(out).text["poegen"])
    assert Image.open(tmp_path / "scene_raw.png").size == (16, 16) and "controlnet[a small red ball]" in meta["experts"]


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_a_layout_spec_runs_through_the_cli(models, tmp_path, family):
    from PIL import Image

    out = tmp_path / f"{family}.png"
    assert main(["generate", "--layout", "examples/layout_stack.json", "--expert", f"{family}:{models[family]}",
                 "--potential", f"clip:{models['clip']}", "--steps", "2", "--particles", "2", "-q",
                 "--out", str(out)]) == 0
    meta = json.loads(Image.open(out).text["poegen"])
    assert f"{family}[a red ball]" in meta["experts"] and "clip[a red ball on a blue box]" in meta["potentials"]


def test_compare_with_named_models_metrics_and_budgets(models, tmp_path, capsys):
    cfg = tmp_path / "steer.yaml"
    cfg.write_text(json.dumps({"experts": [{"kind": "sd", "path": models["sd"]}],
                               "potentials": [{"kind": "clip", "path": models["clip"]}]}))
    out = tmp_path / "cmp"
    assert main(["compare", "a red ball and a blue box", "examples/layout_two_objects.yaml", "--config", str(cfg),
                 "--metrics", f"vqa:{models['vlm']}", f"detector:{models['owl']}", "--budgets", "1,2",
                 "--samplers", "poe,best-of-n", "--seeds", "2", "--steps", "2", "-q", "--out", str(out)]) == 0
    data = json.loads((out / "summary.json").read_text())
    assert [(s["sampler"], s["particles"]) for s in data["summary"]] == [("poe", 1), ("best-of-n", 1), ("poe", 2),
                                                                        ("best-of-n", 2)]
    for s in data["summary"]:
        assert s["present"] is None and s["vqa"] <= 0 and 0 <= s["detector_miou"] <= 1 and s["n"] == 4
    nfe = {(s["sampler"], s["particles"]): s["nfe"] for s in data["summary"]}
    assert nfe["poe", 2] > nfe["poe", 1] and nfe["best-of-n", 2] > nfe["best-of-n", 1]
    header = (out / "samples.csv").read_text().splitlines()[0]
    assert "vqa" in header and "detector_miou" in header and "particles" in header
    html = (out / "report.html").read_text()
    assert "<th>vqa</th>" in html and "<th>detector_miou</th>" in html
    assert "detector_miou" in capsys.readouterr().out


def test_a_batch_job_takes_layouts_and_scenes_with_a_config(models, tmp_path):
    from poegen.batch import run_batch

    cfg = tmp_path / "sd.yaml"
    cfg.write_text(json.dumps({"experts": [{"kind": "sd", "path": models["sd"]}]}))
    jobs = tmp_path / "jobs.jsonl"
    common = {"config": str(cfg), "steps": 2, "particles": 2}
    jobs.write_text("\n".join(json.dumps(j) for j in [
        {"id": "lay", "layout": str(EXAMPLES / "layout_two_objects.yaml"), **common},  # relative paths would be
        {"id": "scn", "scene": str(EXAMPLES / "stacking.yaml"), **common},             # the job file's folder's
        {"id": "cmp", "prompt": "a red ball and a blue box", "compose": True, **common}]))
    counts = run_batch(jobs, tmp_path / "out", progress=False)
    assert counts == {"done": 3, "skipped": 0, "failed": 0}
    assert all((tmp_path / "out" / f"{i}.png").exists() for i in ("lay", "scn", "cmp"))


@pytest.mark.parametrize("spec,message", [
    ({"prompt": "x", "objects": [{"phrase": "a ball", "box": [0.1, 0.2, 1.3, 0.5]}]},
     r"objects\[0\].box\[2\]: 1.3 is outside \[0, 1\]"),
    ({"prompt": "x", "objects": [{"box": [0.1, 0.2, 0.3, 0.5]}]}, r"objects\[0\].phrase: missing"),
    ({"prompt": "x", "objects": [{"phrase": "a ball", "box": [0.5, 0.2, 0.3, 0.5]}]}, r"need x0 < x1"),
    ({"prompt": "x", "objects": [{"phrase": "a ball", "size": 3}]}, r"objects\[0\]: unknown field\(s\) size"),
    ({"prompt": "x", "objects": [{"phrase": "a"}, {"phrase": "b"}], "relations": [[0, "under", 1]]},
     r"relations\[0\]: expected \[i, relation, j\]"),
])
def test_layout_spec_errors_name_the_field(tmp_path, capsys, spec, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=message):
        load_layout(path)
    assert main(["generate", "--layout", str(path), "-q", "--out", str(tmp_path / "x.png")]) == 2
    assert "bad.json" in capsys.readouterr().err


def test_named_model_errors_name_the_field_and_the_fix(models, tmp_path):
    with pytest.raises(ValueError, match=r"options.base is missing"):
        build("a ball", [{"kind": "controlnet", "path": models["controlnet"]}])
    with pytest.raises(ValueError, match=r"no control image; use --scene"):
        build("a ball", [{"kind": "controlnet", "path": models["controlnet"], "options": {"base": models["sd"]}}])
    with pytest.raises(ValueError, match=r"is not a detector that can take text queries"):
        build("a ball", [f"sd:{models['sd']}"], [f"detector:{models['clip']}"])
    with pytest.raises(ValueError, match=r"experts\[0\].options: unknown field\(s\) steps"):
        build("a ball", [{"kind": "sd", "path": models["sd"], "options": {"steps": 3}}])
    with pytest.raises(ValueError, match=r"--potential 'owl:x': expected KIND:PATH with KIND one of .*detector"):
        build("a ball", [f"sd:{models['sd']}"], ["owl:x"])
    with pytest.raises(ValueError, match=r"--potential needs --expert or --config"):
        poegen.build_product(from_prompt("a red ball"), potentials=[f"clip:{models['clip']}"])


def test_model_cache_is_keyed_by_kind_path_and_dtype(models):
    from poegen.experts.diffusers import TextConditionedUNetExpert

    a = TextConditionedUNetExpert.load_prompts(models["sd"], ["a red ball"])[0]
    b = TextConditionedUNetExpert.load_prompts(models["sd"] + "/", ["a blue box"])[0]
    c = TextConditionedUNetExpert.load_prompts(models["sd"], ["a red ball"], torch_dtype=torch.bfloat16)[0]
    assert a.unet is b.unet and c.unet is not a.unet and next(c.unet.parameters()).dtype == torch.bfloat16
    cache.clear()
    assert TextConditionedUNetExpert.load_prompts(models["sd"], [""])[0].unet is not a.unet


def test_every_kind_takes_torch_dtype_and_the_tuning_options(models):
    from poegen.experts.registry import GENERATIVE, OPTIONS, POTENTIALS, VIDEO

    assert all("torch_dtype" in OPTIONS[k] for k in (*GENERATIVE, *POTENTIALS))
    assert all("compile" in OPTIONS[k] for k in GENERATIVE)
    assert all("channels_last" in OPTIONS[k] for k in GENERATIVE if k not in VIDEO)  # 4-D: not for 3-D convs
    product = build("a red ball", [{"kind": "sd", "path": models["sd"],
                                    "options": {"torch_dtype": "bfloat16", "channels_last": True}}],
                    [{"kind": "clip", "path": models["clip"], "options": {"torch_dtype": "bfloat16"}}])
    unet, clip = product.experts[0].unet, product.potentials[0].model
    assert next(unet.parameters()).dtype == torch.bfloat16 and next(clip.parameters()).dtype == torch.bfloat16
    conv = unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    r = poegen.sample(product, num_particles=2, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(r.x).all() and r.x.dtype == torch.float32  # particles stay float32
