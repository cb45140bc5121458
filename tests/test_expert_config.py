"""Experts and potentials named on the command line and in a YAML/JSON config file, on tiny offline models."""
import json

import pytest

from poegen import defaults
from poegen.cli import main
from poegen.experts.registry import load_config
from poegen.families import named_product as build

from helpers import tiny_clip_folder, tiny_flux_folder, tiny_sdxl_folder, tiny_vlm_folder


def _png_meta(path):
    from PIL import Image
    return json.loads(Image.open(path).text["poegen"])


def test_flux_and_vqa_from_a_yaml_config(tmp_path):
    flux, vlm = tiny_flux_folder(tmp_path / "flux"), tiny_vlm_folder(tmp_path / "vlm")
    cfg = tmp_path / "experts.yaml"
    cfg.write_text(f"""
prompt: a red ball
experts:
  - {{kind: flux, path: {flux}, guidance: 2.5, options: {{resolution: 16, micro_batch: 2}}}}
potentials:
  - {{kind: vqa, path: {vlm}, weight: 2.0, options: {{versus: "No"}}}}
  - {{kind: vqa, path: {vlm}, prompt: a blue box}}
""")
    spec = load_config(cfg)
    product = build(spec["prompt"], spec["experts"], spec["potentials"], guidance=1.0, lambdas=0.5)
    assert product.names == ["flux[a red ball]"]
    assert product.potential_names == ["vqa[a red ball]", "vqa[a blue box]"]
    assert product.lambdas == [2.0, 0.5]  # an entry's weight, else --potential-weight
    flux_expert, vqa = product.experts[0], product.potentials[0]
    assert flux_expert.guidance == 2.5 and flux_expert.micro_batch == 2 and flux_expert.shape == (4, 8, 8)
    assert len(vqa.answer_ids) == 2  # versus "No"
    out = tmp_path / "img.png"
    assert main(["generate", "--config", str(cfg), "--steps", "2", "--particles", "4", "--quiet", "--out", str(out)]) == 0
    meta = _png_meta(tmp_path / "img_raw.png")
    assert meta["job"]["config"] == str(cfg) and meta["potentials"] == {"vqa[a red ball]": 2.0, "vqa[a blue box]": 1.0}
    # VQAScore certifies, so the rounds run (random tiny weights: never certified, so up to the budget): each
    # particle scored at level 0 and both levels
    # the first round is poe's search: twice FIRST_ROUND particles, without moves
    assert meta["rounds"][0] == 2 * defaults.FIRST_ROUND and meta["certified"] is False and len(meta["rounds"]) > 1
    assert meta["nfe"]["vqa[a red ball]"] == sum(meta["rounds"]) * 3


def test_sdxl_and_pickscore_by_name_on_the_command_line(tmp_path, capsys):
    from PIL import Image

    sdxl, clip = tiny_sdxl_folder(tmp_path / "sdxl"), tiny_clip_folder(tmp_path / "clip")
    product = build("a red ball", [f"sdxl:{sdxl}"], [f"pickscore:{clip}"], guidance=3.0)
    assert product.weights == [3.0, -2.0] and product.names == ["sdxl[a red ball]", "sdxl[]"]
    assert product.experts[0].batch_key == product.experts[1].batch_key  # guidance rows share one UNet call
    out = tmp_path / "img.png"
    assert main(["generate", "a red ball", "--expert", f"sdxl:{sdxl}", "--potential", f"pickscore:{clip}",
                 "--guidance", "3", "--steps", "2", "--particles", "4", "--quiet", "--out", str(out)]) == 0
    assert Image.open(tmp_path / "img_raw.png").size == (16, 16)  # decoded by the VAE
    assert _png_meta(tmp_path / "img_raw.png")["nfe"]["pickscore[a red ball]"] == 4 * 3
    capsys.readouterr()
    assert main(["experts"]) == 0
    listed = capsys.readouterr().out
    for kind in ("sd ", "sdxl", "flux", "unet", "clip", "pickscore", "vqa", "--config"):
        assert kind in listed


@pytest.mark.parametrize("text,message", [
    ("experts: [{kind: sd, pth: /m}]", r"experts\[0\]: unknown field\(s\) pth; allowed: kind, path, prompt"),
    ("experts: [{kind: sd}]", r"experts\[0\]: missing required field\(s\) path"),
    ("experts: [{kind: sd15, path: /m}]", r"experts\[0\]: kind 'sd15' is not one of sd, sdxl, sd3, flux, controlnet, .*unet"),
    ("experts: [{kind: flux, path: /m, options: {steps: 3}}]",
     r"experts\[0\].options: unknown field\(s\) steps; allowed: micro_batch, resolution"),
    ("experts: [{kind: sd, path: /m, guidance: high}]", r"experts\[0\].guidance: expected a number"),
    ("experts: []", r"experts must be a list of mappings with kind and path \(at least one\)"),
    ("experts: [{kind: sd, path: /m}]\nsampler: poe", r"unknown field\(s\) sampler; allowed: prompt, compose, parts, questions, max_memory, experts"),
    ("experts: [{kind: sd, path: /m}]\npotentials: [{kind: clip, path: /c, options: {answer: 'No'}}]",
     r"potentials\[0\].options: unknown field\(s\) answer; allowed: tokenizer"),
    ("experts: [{kind: sd, path: /m}", r"cannot parse"),
    ("potentials: []", r"missing required field\(s\) experts"),
])
def test_config_errors_name_the_field_and_the_fix(tmp_path, capsys, text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(cfg)
    assert main(["generate", "a red ball", "--config", str(cfg), "--quiet", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and not (tmp_path / "x.png").exists()


def test_json_config_and_a_missing_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = tmp_path / "experts.json"
    cfg.write_text(json.dumps({"experts": [{"kind": "flux", "path": "black-forest-labs/FLUX.1-dev"}]}))
    spec = load_config(cfg)
    assert spec == {"prompt": None, "experts": [{"kind": "flux", "path": "black-forest-labs/FLUX.1-dev"}],
                    "potentials": [], "compose": False, "parts": None, "questions": None, "max_memory": None,
                    "dtype": "auto"}
    with pytest.raises(ValueError, match=r"prompt: empty"):
        build("", spec["experts"])
    with pytest.raises(FileNotFoundError, match="huggingface-cli download black-forest-labs/FLUX.1-dev"):
        build("a red ball", spec["experts"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_config_dtype_is_checked_and_fills_torch_dtype(tmp_path):
    """A config's dtype: refused unless auto/float32/bfloat16; an explicit one becomes the torch_dtype of the
    entries that take one and name none, never overriding an entry's own."""
    from poegen.families import _with_dtype

    cfg = tmp_path / "c.yaml"
    cfg.write_text("experts: [{kind: sd, path: /m}]\ndtype: half")
    with pytest.raises(ValueError, match="dtype 'half': expected one of auto, float32, bfloat16"):
        load_config(cfg)
    cfg.write_text("experts: [{kind: sd, path: /m}]\ndtype: bfloat16")
    assert load_config(cfg)["dtype"] == "bfloat16"
    plain = {"kind": "sd", "path": "/m", "options": {}}
    own = {"kind": "sd", "path": "/m", "options": {"torch_dtype": "float32"}}
    assert _with_dtype(plain, "bfloat16")["options"] == {"torch_dtype": "bfloat16"}
    assert _with_dtype(own, "bfloat16")["options"] == {"torch_dtype": "float32"}
    assert _with_dtype(plain, "auto") is plain
