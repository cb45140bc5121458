"""Broken model folders and memory refusals: a truncated or corrupt weight file, a config with a wrong
field or invalid JSON, a missing file, and weights or particles that would not fit are each one short error that
names the file (or the flag) and the fix; on real tiny folders saved with save_pretrained, nothing mocked."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from poegen.cli import main
from poegen.experts import cache

from helpers import tiny_clip_folder, tiny_sd_folder, tiny_vlm_folder

FIX = "re-download the model"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"sd": tiny_sd_folder(root / "sd"), "clip": Path(tiny_clip_folder(root / "clip"))}


def _copy(folders, kind, tmp_path) -> Path:
    cache.clear()  # the copy is a new path, but never reuse a model loaded from a sound folder
    return Path(shutil.copytree(folders[kind], tmp_path / kind))


def truncate(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_header(path: Path):
    data = bytearray(path.read_bytes())
    data[8:40] = b"\xff" * 32  # the JSON header starts after its 8-byte length
    path.write_bytes(bytes(data))


def set_field(path: Path, key, value):
    config = json.loads(path.read_text())
    config[key] = value
    path.write_text(json.dumps(config))


UNET_W, TE_W = "unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"
SD_FAULTS = [  # (name, fault on the folder, error type, the file or folder the message must name, text it must hold)
    ("truncated unet", lambda d: truncate(d / UNET_W), OSError, UNET_W, "damaged or incomplete"),
    ("corrupt vae", lambda d: corrupt_header(d / "vae/diffusion_pytorch_model.safetensors"), OSError,
     "vae/diffusion_pytorch_model.safetensors", "damaged or incomplete"),
    ("truncated text encoder", lambda d: truncate(d / TE_W), OSError, TE_W, "damaged or incomplete"),
    ("text for a number", lambda d: set_field(d / "unet/config.json", "layers_per_block", "two"), ValueError,
     "unet/config.json", "field 'layers_per_block' is 'two'"),
    ("unknown class", lambda d: set_field(d / "unet/config.json", "_class_name", "NoSuchModel"), ValueError,
     "unet/config.json", "_class_name 'NoSuchModel' is no diffusers class"),
    ("text encoder field", lambda d: set_field(d / "text_encoder/config.json", "hidden_size", "big"), ValueError,
     "text_encoder/config.json", "hidden_size"),
    ("invalid JSON", lambda d: (d / "scheduler/scheduler_config.json").write_text('{"beta_start": 0.1,'), ValueError,
     "scheduler/scheduler_config.json", "is not valid JSON (Expecting"),
    ("no unet config", lambda d: (d / "unet/config.json").unlink(), FileNotFoundError, "unet/config.json",
     "is missing (looked for it in"),
    ("no unet weights", lambda d: (d / UNET_W).unlink(), FileNotFoundError, "unet", "no weights in"),
    ("no tokenizer", lambda d: shutil.rmtree(d / "tokenizer"), FileNotFoundError, "tokenizer",
     "the CLIPTokenizer is looked for there"),
]


@pytest.mark.parametrize("name,fault,error,where,text", SD_FAULTS, ids=[c[0] for c in SD_FAULTS])
def test_a_broken_sd_folder_is_one_error_naming_the_file_and_the_fix(folders, tmp_path, name, fault, error, where,
                                                                     text):
    from poegen.families import named_product

    sd = _copy(folders, "sd", tmp_path)
    fault(sd)
    with pytest.raises(error) as info:
        named_product("a red ball", [f"sd:{sd}"], [])
    message = str(info.value)
    assert f"{sd / where}" in message and text in message and FIX in message, message
    assert "\n" not in message and len(message) < 400, message


CLIP_FAULTS = [
    ("truncated", lambda d: truncate(d / "model.safetensors"), OSError, "model.safetensors", "damaged or incomplete"),
    ("corrupt", lambda d: corrupt_header(d / "model.safetensors"), OSError, "model.safetensors",
     "damaged or incomplete"),
    ("field", lambda d: set_field(d / "config.json", "projection_dim", "x"), ValueError, "config.json",
     "'projection_dim'"),
    ("no config", lambda d: (d / "config.json").unlink(), FileNotFoundError, "config.json", "is missing"),
    ("no tokenizer", lambda d: [p.unlink() for p in d.glob("tokenizer*")], FileNotFoundError, "",
     "no tokenizer in"),  # before: an empty tokenizer loaded silently and every question scored the same
]


@pytest.mark.parametrize("name,fault,error,where,text", CLIP_FAULTS, ids=[c[0] for c in CLIP_FAULTS])
def test_a_broken_clip_folder_is_one_error_naming_the_file(folders, tmp_path, name, fault, error, where, text):
    from poegen.experts.registry import POTENTIALS

    clip = _copy(folders, "clip", tmp_path)
    fault(clip)
    with pytest.raises(error) as info:
        POTENTIALS["clip"][1](str(clip), ["a red ball"])
    message = str(info.value)
    assert str(clip / where).rstrip("/") in message and text in message and FIX in message, message
    assert "\n" not in message, message


def test_a_truncated_vlm_checkpoint_names_its_file(tmp_path):
    from poegen.experts.registry import POTENTIALS

    vlm = Path(tiny_vlm_folder(tmp_path / "vlm"))
    truncate(vlm / "model.safetensors")
    with pytest.raises(OSError, match=r"vlm/model\.safetensors is damaged or incomplete .*re-download the model"):
        POTENTIALS["vqa"][1](str(vlm), ["a red ball"])


def _cli(args, timeout=240, **env):
    """`python -m poegen ...` in a fresh process: (exit code, stderr)."""
    run = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                         env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **env),
                         cwd=Path(__file__).resolve().parents[1])
    return run.returncode, run.stderr


def test_the_cli_says_which_weight_file_is_cut_short_in_one_line(folders, tmp_path):
    sd = _copy(folders, "sd", tmp_path)
    truncate(sd / UNET_W)
    code, err = _cli(["-m", "poegen", "generate", "a red ball", "--expert", f"sd:{sd}", "--particles", "2",
                      "--steps", "1", "-q", "--out", str(tmp_path / "out.png")])
    assert code == 4, err  # files and disks (an OSError); before: a message without the fix
    assert err.strip().splitlines() == [f"poegen: error: {sd / UNET_W} is damaged or incomplete (Error while "
                                         "deserializing header: incomplete metadata, file not fully covered); "
                                         "re-download the model (huggingface-cli download ID --local-dir FOLDER) "
                                         "or save it again with save_pretrained"], err
    assert not (tmp_path / "out.png").exists()


def test_the_cli_refuses_in_one_line_a_missing_tokenizer_before_loading_the_text_encoder(folders, tmp_path, capsys):
    sd = _copy(folders, "sd", tmp_path)
    shutil.rmtree(sd / "tokenizer")  # before: OverflowError "int too big to convert", exit 5
    assert main(["generate", "a red ball", "--expert", f"sd:{sd}", "-q", "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"poegen: error: {sd / 'tokenizer'} is missing"), err


def test_too_many_particles_on_a_named_model_are_refused_naming_the_flag(folders, tmp_path, capsys):
    sd = _copy(folders, "sd", tmp_path)
    assert main(["generate", "a red ball", "--expert", f"sd:{sd}", "--particles", "10000000000", "-q",
                 "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err  # the one line only: no "Loading weights" bars of transformers under -q
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err and not (tmp_path / "o.png").exists(), err
    assert lines[0].startswith("poegen: error: --particles 10000000000: the particles alone need about "), err
    assert lines[0].endswith("use fewer particles"), err


AS_LIMIT = r"""
import resource, sys
import torch
from diffusers import DDPMScheduler, UNet2DModel  # imports map libraries: done before the limit
import poegen.pipeline, poegen.families, poegen.samplers.engine
from poegen.cli import main
from poegen.memory import _status

need = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (_status("VmSize") + need // 2, resource.getrlimit(resource.RLIMIT_AS)[1]))
try:
    torch.empty(need // 4)  # the weights' own size cannot be allocated under this limit
    sys.exit(9)
except RuntimeError:
    pass
sys.exit(main(["generate", "a red ball", "--expert", f"unet:{sys.argv[1]}", "-q", "--out", sys.argv[3]]))
"""


def test_weights_larger_than_the_memory_left_are_refused_before_loading_naming_the_dtype(tmp_path):
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)  # a 40 MB pixel UNet (10 M float32 parameters)
    UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(128, 256), layers_per_block=1,
                down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                norm_num_groups=8).save_pretrained(tmp_path / "unet")
    DDPMScheduler().save_pretrained(tmp_path / "scheduler")
    need = (tmp_path / "unet/diffusion_pytorch_model.safetensors").stat().st_size
    code, err = _cli(["-c", AS_LIMIT, str(tmp_path), str(need), str(tmp_path / "o.png")])
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"poegen: error: {tmp_path / 'unet'}: UNet2DModel needs about 40 MB to load (as stored) and "), err
    left = re.search(r"and (\d+) MB is available under the address-space limit of [\d.]+ GB \(ulimit -v\)", err)
    assert left and int(left.group(1)) < 40, err
    assert lines[0].endswith("load it in bfloat16 (--dtype bfloat16, or options.torch_dtype in a config) or free memory")
