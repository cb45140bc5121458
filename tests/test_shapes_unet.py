"""The shapes prior's plain-torch UNet against diffusers' UNet2DModel on the same weights."""
import pytest
import torch

from poegen.experts.shapes.model import DEFAULT_CONFIG, load_prior
from poegen.experts.shapes.unet import UNet


def _diffusers_unet(cfg):
    from diffusers import UNet2DModel
    return UNet2DModel(sample_size=cfg["image_size"], in_channels=4, out_channels=3,
                       block_out_channels=tuple(cfg["block_out_channels"]), layers_per_block=cfg["layers_per_block"],
                       down_block_types=tuple(cfg["down_block_types"]), up_block_types=tuple(cfg["up_block_types"]),
                       norm_num_groups=cfg["norm_num_groups"], attention_head_dim=cfg["attention_head_dim"],
                       class_embed_type="identity").eval()


@pytest.mark.parametrize("changes", [{}, {"layers_per_block": 2, "block_out_channels": [8, 16],
                                          "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
                                          "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
                                          "norm_num_groups": 4, "attention_head_dim": 8, "image_size": 16}])
def test_matches_diffusers_on_random_weights(changes):
    cfg = {**DEFAULT_CONFIG, **changes}
    torch.manual_seed(0)
    ref = _diffusers_unet(cfg)
    for p in ref.parameters():  # diffusers zero-initialises some output layers: make every path count
        p.data.normal_(0, 0.1)
    ours = UNet(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # same parameter names, nothing missing or extra
    n, s = 5, cfg["image_size"]
    x, t, c = torch.randn(n, 4, s, s), torch.rand(n) * 1000, torch.randn(n, cfg["block_out_channels"][0] * 4)
    with torch.no_grad():
        a, b = ref(x, t, class_labels=c).sample, ours(x, t, c)
    assert a.abs().mean() > 0.01
    assert (a - b).abs().max().item() <= 1e-5 * a.abs().max().item()


def test_embedded_prior_matches_diffusers():
    prior = load_prior()
    ref = _diffusers_unet(prior.config)
    ref.load_state_dict(prior.net.unet.state_dict(), strict=True)
    torch.manual_seed(1)
    x, t, c = torch.randn(3, 4, 32, 32), torch.tensor([1.0, 400.0, 990.0]), torch.randn(3, 64)
    with torch.no_grad():
        assert torch.allclose(ref(x, t, class_labels=c).sample, prior.net.unet(x, t, c), atol=1e-5, rtol=0)
