"""diffusers experts on tiny models built from configs, saved and loaded back offline."""
import pytest
import torch

import poegen
from poegen.experts.diffusers import VPUNetExpert


def tiny_vp_folder(tmp_path, prediction_type):
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    unet.save_pretrained(tmp_path / "unet")
    DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type).save_pretrained(tmp_path / "scheduler")
    return unet


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_vp_unet_denoiser_matches_the_vp_formulas(tmp_path, prediction_type):
    unet = tiny_vp_folder(tmp_path, prediction_type)
    expert = VPUNetExpert.from_pretrained(str(tmp_path))
    assert expert.shape == (3, 8, 8) and expert.prediction_type == prediction_type
    ab = expert.alphas_cumprod
    i = 600  # a table timestep: the VE sigma maps back to exactly t = 600
    sigma = ((1 - ab[i]) / ab[i]).sqrt().float()
    x0, eps = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    x_ve = x0 + sigma * eps
    a, s = ab[i].sqrt().float(), (1 - ab[i]).sqrt().float()
    x_vp = a * x0 + s * eps
    with torch.no_grad():
        out = unet(x_vp, torch.full((4,), float(i))).sample
    expected = {"epsilon": (x_vp - s * out) / a, "v_prediction": a * x_vp - s * out, "sample": out}[prediction_type]
    assert torch.allclose(expert.denoise(x_ve, sigma), expected, atol=1e-4)


def test_micro_batches_match_one_batch(tmp_path):
    tiny_vp_folder(tmp_path, "epsilon")
    x, sigma = torch.randn(5, 3, 8, 8), torch.tensor(2.0)
    full = VPUNetExpert.from_pretrained(str(tmp_path)).denoise(x, sigma)
    parts = VPUNetExpert.from_pretrained(str(tmp_path), micro_batch=2).denoise(x, sigma)
    assert torch.allclose(full, parts, atol=1e-5)


def test_poe_runs_on_a_tiny_unet(tmp_path):
    tiny_vp_folder(tmp_path, "epsilon")
    expert = VPUNetExpert.from_pretrained(str(tmp_path))
    r = poegen.sample(poegen.Product([expert]), num_particles=4, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert r.x.shape == (4, 3, 8, 8) and torch.isfinite(r.x).all()
    assert r.nfe[expert.name] == 4 * (1 + 2 * 3)


def test_missing_checkpoint_says_where_and_how(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError, match=r"not found.*huggingface-cli download someone/missing-model"):
        VPUNetExpert.from_pretrained("someone/missing-model")
