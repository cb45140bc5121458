"""CLIP score on a tiny CLIP built from a config, saved and loaded back offline."""
import torch

from poegen.experts.vlm import ClipScore
from poegen.testing import tiny_clip_folder


def test_clip_score_matches_the_model_and_is_differentiable(tmp_path):
    from transformers import CLIPModel, CLIPTokenizer

    root = tiny_clip_folder(tmp_path)
    red = ClipScore.from_pretrained(root, "a red ball")
    blue = ClipScore.from_pretrained(root, "a blue box")
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    s = red.log_potential(images)
    assert s.shape == (3,) and torch.isfinite(s).all()
    assert not torch.allclose(s, blue.log_potential(images))
    # the same number through the model's own forward (logits_per_image) on the same pixels
    model = CLIPModel.from_pretrained(root)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    ids = CLIPTokenizer.from_pretrained(root)(["a red ball"], padding="max_length", max_length=8, truncation=True,
                                              return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=ids.input_ids, attention_mask=ids.attention_mask,
                       pixel_values=((images + 1) / 2 - mean) / std).logits_per_image[:, 0]
    assert torch.allclose(s, logits, atol=1e-4)
    # differentiable in the image
    x = images.clone().requires_grad_(True)
    red.log_potential(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
