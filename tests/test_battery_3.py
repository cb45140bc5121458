"""The fault battery, group "3 CLI": odd command lines and options, one row per case: what each input must do
(a clear one-line refusal with its exit code, or the correct success; exit codes as in docs/reliability.md)."""
import errno
import json
import os
import pathlib
import tempfile
from pathlib import Path

import pytest
import torch

from helpers import Case, tiny_sd_folder

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
OUT = ["--out", "{tmp}/x.png"]
FAST = ["-q", "--particles", "2", "--steps", "3"]
GEN = ["generate", "a red ball", *FAST, *OUT]
CMP = ["-q", "--seeds", "1", "--particles", "2", "--steps", "3", "--workers", "1", "--samplers", "poe",
       "--out", "{tmp}/cmp"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
NO_MPS = pytest.mark.skipif(torch.backends.mps.is_available(), reason="an MPS device is present")


class Row(Case):
    """A Case with an optional ``setup(tmp_path, monkeypatch)`` run first, and ``sd``: a tiny Stable-Diffusion
    folder at {tmp}/sd (built once per module)."""

    def __init__(self, argv, code, text="", setup=None, sd=False, **kwargs):
        super().__init__(argv, code, text, **kwargs)
        self.setup, self.sd = setup, sd


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return tiny_sd_folder(tmp_path_factory.mktemp("tiny-sd"))


def _meta(path):
    from PIL import Image
    return json.loads(Image.open(path).text["poegen"])


def _pngs(*names):
    """check: each name is a PNG under the folder."""
    def check(tmp):
        from PIL import Image
        for name in names:
            assert Image.open(tmp / name).format == "PNG", name
    return check


def _absent(*names):
    def check(tmp):
        for name in names:
            assert not (tmp / name).exists(), name
    return check


def _no_sampling(tmp, monkeypatch):
    import poegen.samplers
    monkeypatch.setattr(poegen.samplers, "sample", lambda *a, **k: pytest.fail("sampled before refusing"))


def _read_only(tmp, monkeypatch):
    """{tmp}/ro behaves as a read-only mount (EROFS on creating a file or a folder in it), for root too."""
    ro = tmp / "ro"
    ro.mkdir()
    mkstemp, mkdir = tempfile.mkstemp, pathlib.Path.mkdir

    def inside(path):
        return path is not None and Path(path).resolve().is_relative_to(ro.resolve())

    def fake_mkstemp(*args, dir=None, **kwargs):
        if inside(dir):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return mkstemp(*args, dir=dir, **kwargs)

    def fake_mkdir(self, *args, **kwargs):
        if inside(self) and not self.exists():
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return mkdir(self, *args, **kwargs)
    monkeypatch.setattr(tempfile, "mkstemp", fake_mkstemp)
    monkeypatch.setattr(pathlib.Path, "mkdir", fake_mkdir)
    _no_sampling(tmp, monkeypatch)


def _ulimit_6gb(tmp, monkeypatch):
    """As under `ulimit -v 6000000`: a 6 GB soft address-space limit."""
    import resource
    getrlimit = resource.getrlimit
    monkeypatch.setattr(resource, "getrlimit", lambda which: (6 * 2 ** 30, resource.RLIM_INFINITY)
                        if which == resource.RLIMIT_AS else getrlimit(which))
    _no_sampling(tmp, monkeypatch)


def _deep(tmp):
    _pngs("deep/a/b/c/d/x.png", "deep/a/b/c/d/x_raw.png")(tmp)


def _scratch_untouched(tmp):
    assert sorted(p.name for p in tmp.iterdir()) == ["scratch"] and not any((tmp / "scratch").iterdir())


def _scene_on_sd(tmp):
    meta = _meta(tmp / "x_raw.png")
    assert meta["job"]["scene"] and meta["job"]["config"] and any(n.startswith("sd[") for n in meta["experts"])


def _sd_float32(tmp):
    meta = _meta(tmp / "x_raw.png")
    assert any(n.startswith("sd[") for n in meta["experts"])


def _experts_as_a_mapping_too(tmp):
    from poegen.cli import main
    (tmp / "map.yaml").write_text("experts: {kind: sd, path: /m}\n")
    assert main(["generate", "a red ball", *FAST, "--config", str(tmp / "map.yaml"), "--out", str(tmp / "x.png")]) == 2


def _not_executed(tmp):
    assert not (tmp / "pwned").exists()


def _cli_guidance_nan_too(tmp):
    import io
    from contextlib import redirect_stderr

    from poegen.cli import main
    err = io.StringIO()
    with redirect_stderr(err):
        code = main(["generate", "a red ball", *FAST, "--expert", f"sd:{tmp / 'sd'}", "--guidance", "nan",
                     "--out", str(tmp / "y.png")])
    assert code == 2 and "guidance 'nan' is not a finite number" in err.getvalue()


def _negated_weights(tmp):
    meta = _meta(tmp / "x_raw.png")
    from poegen.experts.shapes.prompt import COUNT_WEIGHT, FORM_WEIGHT
    vlm = {v for k, v in meta["potentials"].items() if k != "footprint"}  # the footprint is not the scorer's
    assert -1.0 in meta["experts"].values() and vlm == {-3.0, -3.0 * COUNT_WEIGHT, -3.0 * FORM_WEIGHT}


def _frames(tmp):
    from PIL import Image
    _pngs("x_f00.png", "x_f01.png", "x_f02.png", "x_f00_raw.png", "x_f02_raw.png")(tmp)
    assert not (tmp / "x_f03.png").exists()
    gif = Image.open(tmp / "x.gif")
    assert gif.format == "GIF" and gif.n_frames == 3


SD_CFG = "prompt: a red ball\nexperts: [{kind: sd, path: {tmp}/sd%s}]\n"
CASES = {
    "3 CLI: --particles 0": Row(GEN + ["--particles", "0"], 2, "particles 0 must be >= 1"),
    "3 CLI: --particles -5": Row(GEN + ["--particles", "-5"], 2, "particles -5 must be >= 1"),
    "3 CLI: --steps 0": Row(GEN + ["--steps", "0"], 2, "steps 0 must be >= 1"),
    "3 CLI: --steps -1": Row(GEN + ["--steps", "-1"], 2, "steps -1 must be >= 1"),
    "3 CLI: --mcmc-steps -1": Row(GEN + ["--mcmc-steps", "-1"], 2, "need mcmc_steps >= 0"),
    "3 CLI: --particles 2.5": Row(GEN + ["--particles", "2.5"], 2, "argument --particles: invalid int value: '2.5'"),
    "3 CLI: --particles 1e9": Row(GEN + ["--particles", "1000000000"], 2,
                                  "--particles 1000000000: the particles alone need about", setup=_no_sampling),
    "3 CLI: --particles 200000 under a 6 GB ulimit": Row(
        GEN + ["--particles", "200000"], 2, "under the address-space limit of 6.0 GB (ulimit -v); use fewer particles",
        setup=_ulimit_6gb),
    "3 CLI: --sampler foo": Row(GEN + ["--sampler", "foo"], 2, "argument --sampler: invalid choice: 'foo'"),
    "3 CLI: --frames 4 with a prompt": Row(GEN + ["--frames", "4"], 2, "frames 4 needs a scene to simulate",
                                           check=_absent("x.png", "x_raw.png")),
    "3 CLI: prompt and --scene": Row(GEN + ["--scene", str(EXAMPLES / "stacking.yaml")], 2,
                                     "give exactly one of prompt, scene or layout"),
    "3 CLI: neither prompt nor --scene": Row(["generate", *FAST, *OUT], 2,
                                             "give exactly one of prompt, scene or layout (with --config, the prompt "
                                             "may be in it); got none"),
    "3 CLI: --out in a read-only mount": Row(
        ["generate", "a red ball", *FAST, "--out", "{tmp}/ro/x.png"], 2,
        "--out {tmp}/ro/x.png: cannot write in {tmp}/ro (Read-only file system)", setup=_read_only,
        check=_absent("ro/x.png", "ro/x_raw.png")),
    "3 CLI: --out ro/sub/x.png (mkdir in a read-only mount)": Row(
        ["generate", "a red ball", *FAST, "--out", "{tmp}/ro/sub/x.png"], 2,
        "cannot write in {tmp}/ro/sub (Read-only file system)", setup=_read_only, check=_absent("ro/sub")),
    "3 CLI: --out /proc/x.png": Row(["generate", "a red ball", *FAST, "--out", "/proc/x.png"], 2,
                                    "--out /proc/x.png: cannot write in /proc (", setup=_no_sampling),
    "3 CLI: --out deep/a/b/c/d/x.png": Row(["generate", "a red ball", *FAST, "--out", "{tmp}/deep/a/b/c/d/x.png"], 0,
                                           "wrote {tmp}/deep/a/b/c/d/x.png", check=_deep),
    # the battery took PNG files named `noext` as acceptable; poegen now asks for the .png name instead
    "3 CLI: --out noext": Row(["generate", "a red ball", *FAST, "--out", "{tmp}/noext"], 2,
                              "poegen writes PNG (with its metadata); name the file .png", setup=_no_sampling,
                              check=_absent("noext", "noext_raw")),
    "3 CLI: --out x.jpg": Row(["generate", "a red ball", *FAST, "--out", "{tmp}/x.jpg"], 2,
                              "--out {tmp}/x.jpg: poegen writes PNG (with its metadata); name the file .png",
                              setup=_no_sampling, check=_absent("x.jpg", "x_raw.jpg")),
    "3 CLI: --out x.gif": Row(["generate", "a red ball", *FAST, "--out", "{tmp}/x.gif"], 2,
                              "--out {tmp}/x.gif: poegen writes PNG (with its metadata); name the file .png",
                              setup=_no_sampling, check=_absent("x.gif", "x_raw.gif")),
    "3 CLI: --out an existing directory/": Row(
        ["generate", "a red ball", *FAST, "--out", "{tmp}/scratch/"], 2, "--out {tmp}/scratch is a folder",
        setup=lambda tmp, mp: ((tmp / "scratch").mkdir(), _no_sampling(tmp, mp)), check=_scratch_untouched),
    "3 CLI: --device cuda (no GPU)": pytest.param(
        Row(GEN + ["--device", "cuda"], 2, "device 'cuda': this machine has 0 CUDA device(s); use --device cpu"),
        marks=NO_CUDA),
    "3 CLI: --device cuda:0 (no GPU)": pytest.param(
        Row(GEN + ["--device", "cuda:0"], 2, "device 'cuda:0': this machine has 0 CUDA device(s); use --device cpu"),
        marks=NO_CUDA),
    "3 CLI: --device mps": pytest.param(Row(GEN + ["--device", "mps"], 2, "device 'mps': no MPS device here"),
                                        marks=NO_MPS),
    "3 CLI: --device tpu": Row(GEN + ["--device", "tpu"], 2,
                               "device 'tpu' is not a torch device; use cpu, cuda or cuda:N"),
    "3 CLI: --expert sd:/nonexistent/model": Row(GEN + ["--expert", "sd:/nonexistent/model"], 2,
                                                 "model folder '/nonexistent/model' does not exist"),
    "3 CLI: --expert without KIND": Row(GEN + ["--expert", "/models/sd15"], 2,
                                        "--expert '/models/sd15': expected KIND:PATH with KIND one of sd, sdxl"),
    "3 CLI: --expert sd: (empty path)": Row(GEN + ["--expert", "sd:"], 2,
                                            "--expert 'sd:': expected KIND:PATH with KIND one of sd, sdxl"),
    "3 CLI: --expert foo:/x": Row(GEN + ["--expert", "foo:/x"], 2,
                                  "--expert 'foo:/x': expected KIND:PATH with KIND one of sd, sdxl"),
    "3 CLI: --potential without --expert": Row(GEN + ["--potential", "clip:/nonexistent"], 2,
                                               "--potential needs --expert or --config", check=_absent("x_raw.png")),
    "3 CLI: --scene with --potential": Row(
        ["generate", "--scene", str(EXAMPLES / "stacking.yaml"), *FAST, *OUT, "--potential", "clip:/x"], 2,
        "--potential needs --expert or --config", check=_absent("x_raw.png")),
    # a scene now runs on the config's named models (the layout and depth come from physics)
    "3 CLI: --scene with --config": Row(
        ["generate", "--scene", str(EXAMPLES / "stacking.yaml"), "--config", "{tmp}/cfg.yaml", *FAST, *OUT], 0,
        "wrote {tmp}/x.png", files={"cfg.yaml": SD_CFG % ""}, sd=True, check=_scene_on_sd),
    "3 CLI: --config missing file": Row(GEN + ["--config", "{tmp}/missing.yaml"], 2,
                                        "config file {tmp}/missing.yaml does not exist"),
    "3 CLI: config unknown kind dalle": Row(
        GEN + ["--config", "{tmp}/c.yaml"], 2, "c.yaml: experts[0]: kind 'dalle' is not one of sd, sdxl",
        files={"c.yaml": "experts: [{kind: dalle, path: /m}]\n"}),
    "3 CLI: config unknown field scale": Row(
        GEN + ["--config", "{tmp}/c.yaml"], 2, "experts[0]: unknown field(s) scale; allowed: kind, path, prompt",
        files={"c.yaml": "experts: [{kind: sd, path: /m, scale: 2}]\n"}),
    # sd takes torch_dtype now (the battery saw it refused with "allowed: micro_batch")
    "3 CLI: config sd with option torch_dtype": Row(
        ["generate", *FAST, "--config", "{tmp}/c.yaml", *OUT], 0, "wrote {tmp}/x.png",
        files={"c.yaml": SD_CFG % ", options: {torch_dtype: float32}"}, sd=True, check=_sd_float32),
    "3 CLI: config weight '2'": Row(GEN + ["--config", "{tmp}/c.yaml"], 2,
                                    "experts[0].weight: expected a number, got '2'",
                                    files={"c.yaml": "experts: [{kind: sd, path: /m, weight: \"2\"}]\n"}),
    "3 CLI: config experts [] or a mapping": Row(
        GEN + ["--config", "{tmp}/c.yaml"], 2, "experts must be a list of mappings with kind and path (at least one)",
        files={"c.yaml": "experts: []\n"}, check=_experts_as_a_mapping_too),
    "3 CLI: config !!python/object/apply tag": Row(
        GEN + ["--config", "{tmp}/c.yaml"], 2, "c.yaml: cannot parse",
        files={"c.yaml": "experts: !!python/object/apply:os.system ['touch {tmp}/pwned']\n"}, check=_not_executed),
    "3 CLI: config prompt [1,2]": Row(["generate", *FAST, *OUT, "--config", "{tmp}/c.yaml"], 2,
                                      "c.yaml: prompt must be a string",
                                      files={"c.yaml": "prompt: [1, 2]\nexperts: [{kind: sd, path: /m}]\n"}),
    "3 CLI: config flux torch_dtype int8": Row(
        GEN + ["--config", "{tmp}/c.yaml"], 2,
        "c.yaml: experts[0].options: torch_dtype 'int8' is not one of float32, float16, bfloat16",
        files={"c.yaml": "experts: [{kind: flux, path: /m, options: {torch_dtype: int8}}]\n"}),
    "3 CLI: config path 123": Row(GEN + ["--config", "{tmp}/c.yaml"], 2, "c.yaml: experts[0].path: expected",
                                  files={"c.yaml": "experts: [{kind: sd, path: 123}]\n"}),
    "3 CLI: config guidance .nan or --guidance nan (tiny SD)": Row(
        ["generate", *FAST, "--config", "{tmp}/c.yaml", *OUT], 2, "experts[0].guidance: nan is not a finite number",
        files={"c.yaml": SD_CFG % ", guidance: .nan"}, sd=True, check=_cli_guidance_nan_too),
    "3 CLI: config weight .inf (tiny SD)": Row(
        ["generate", *FAST, "--config", "{tmp}/c.yaml", *OUT], 2, "experts[0].weight: inf is not a finite number",
        files={"c.yaml": SD_CFG % ", weight: .inf"}, sd=True),
    "3 CLI: --guidance inf": Row(GEN + ["--guidance", "inf"], 2, "guidance 'inf' is not a finite number"),
    "3 CLI: --vlm-weight nan": Row(GEN + ["--vlm-weight", "nan"], 2, "potential_weight 'nan' is not a finite number"),
    "3 CLI: --grad-guidance -1": Row(GEN + ["--grad-guidance", "-1"], 2, "grad_guidance >= 0"),
    "3 CLI: --grad-guidance 1 --sampler smc": Row(GEN + ["--grad-guidance", "1", "--sampler", "smc"], 0,
                                                  "wrote {tmp}/x.png", check=_pngs("x.png", "x_raw.png")),
    "3 CLI: --vlm-weight -3, --guidance -1": Row(GEN + ["--vlm-weight", "-3", "--guidance", "-1"], 0,
                                                 "wrote {tmp}/x.png", check=_negated_weights),
    # the battery took torch's wrap-around as fine; poegen now keeps seeds in 0 .. 2**63 - 1 (tests/test_faults.py)
    "3 CLI: --seed -1": Row(GEN + ["--seed", "-1"], 2, "seed -1 is outside 0 .. 2**63 - 1"),
    "3 CLI: --seed 99999999999999999999": Row(GEN + ["--seed", "99999999999999999999"], 2,
                                              "seed 99999999999999999999 is outside 0 .. 2**63 - 1"),
    "3 CLI: --scene roll_off.yaml --frames 3": Row(
        ["generate", "--scene", str(EXAMPLES / "roll_off.yaml"), "--frames", "3", *FAST, *OUT], 0,
        "wrote 3 frames", check=_frames),
    "3 CLI: compare --samplers poe,foo": Row(["compare", "a red ball", *CMP, "--samplers", "poe,foo"], 2,
                                             "unknown sampler 'foo'; available:", check=_absent("cmp")),
    "3 CLI: compare 'a purple ball'": Row(["compare", "a purple ball", *CMP], 2,
                                          "unknown word 'purple' in prompt 'a purple ball'; the shapes world knows:"),
    "3 CLI: compare --seeds 0": Row(["compare", "a red ball", *CMP, "--seeds", "0"], 2, "--seeds 0: must be >= 1",
                                    check=_absent("cmp")),
    "3 CLI: compare nonexistent.yaml": Row(["compare", "{tmp}/nonexistent.yaml", *CMP], 2,
                                           "file {tmp}/nonexistent.yaml does not exist"),
    "3 CLI: compare --workers -2": Row(["compare", "a red ball", *CMP, "--workers", "-2"], 2,
                                       "--workers -2: must be >= 0", check=_absent("cmp")),
    "3 CLI: compare --particles 0": Row(["compare", "a red ball", *CMP, "--particles", "0"], 2,
                                        "--particles 0: must be >= 1", check=_absent("cmp")),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_battery(case, tmp_path, capsys, monkeypatch, request):
    if case.sd:
        (tmp_path / "sd").symlink_to(request.getfixturevalue("tiny_sd"), target_is_directory=True)
    if case.setup is not None:
        case.setup(tmp_path, monkeypatch)
    case.run(tmp_path, capsys, monkeypatch)
