"""CLIP score on a tiny CLIP built from a config, saved and loaded back offline."""
import torch

from poegen.experts.vlm import ClipScore


def tiny_clip_folder(tmp_path):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    torch.manual_seed(0)
    words = ["a", "red", "ball", "blue", "box"]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{w + "</w>": i + 2 for i, w in enumerate(words)}}
    for c in "abdelorux":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=8).save_pretrained(tmp_path)
    config = CLIPConfig(text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=8, bos_token_id=0,
                                         eos_token_id=1, pad_token_id=1),
                        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=16, patch_size=4),
                        projection_dim=16)
    CLIPModel(config).save_pretrained(tmp_path)
    return str(tmp_path)


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
