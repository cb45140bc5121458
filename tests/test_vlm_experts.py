"""CLIP score on a tiny CLIP built from a config, saved and loaded back offline."""
import pytest
import torch

from poegen.experts import cache

from poegen.experts.vlm import ClipScore

from helpers import tiny_clip_folder


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


def _uint8_images(n, size=16):
    """Images in [-1, 1] that are exactly representable as 8-bit pixels (so the processor sees the same ones)."""
    g = torch.Generator().manual_seed(1)
    u8 = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return u8, u8.float() / 255 * 2 - 1


def test_vqa_score_is_log_p_yes_at_the_answer_position(tmp_path):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from poegen.experts.vlm import VQAScore
    from helpers import tiny_vlm_folder

    root = tiny_vlm_folder(tmp_path)
    vqa = VQAScore.from_pretrained(root, "a red ball")
    both = VQAScore.from_pretrained(root, "a red ball", versus="No")
    u8, images = _uint8_images(3)
    s = vqa.log_potential(images)
    assert s.shape == (3,) and (s <= 0).all()
    # by hand: the processor's own prompt expansion and pixels, the model's logits at the last position
    processor, model = AutoProcessor.from_pretrained(root), AutoModelForImageTextToText.from_pretrained(root)
    prompt = 'USER: <image>\nDoes this figure show "a red ball"? Please answer yes or no. ASSISTANT:'
    inputs = processor(images=[Image.fromarray(u.permute(1, 2, 0).numpy()) for u in u8], text=[prompt] * 3,
                       return_tensors="pt")
    assert (inputs.input_ids == model.config.image_token_id).sum(1).tolist() == [16] * 3  # 4x4 patches, no CLS
    assert torch.equal(inputs.input_ids[:1], vqa.input_ids)
    with torch.no_grad():
        logits = model(**inputs).logits[:, -1]
    yes, no = processor.tokenizer.convert_tokens_to_ids(["Yes", "No"])
    assert torch.allclose(s, logits.log_softmax(-1)[:, yes], atol=1e-4)
    assert torch.allclose(both.log_potential(images), torch.nn.functional.logsigmoid(logits[:, yes] - logits[:, no]),
                          atol=1e-4)
    assert (both.log_potential(images) > s).all()  # two answers share the mass the whole vocabulary shares
    other = VQAScore.from_pretrained(root, "a blue box")
    assert not torch.allclose(other.log_potential(images), s)  # the question reaches the language model
    x = images.clone().requires_grad_(True)
    vqa.log_potential(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0  # differentiable in the image
    assert torch.allclose(VQAScore.from_pretrained(root, "a red ball", micro_batch=2).log_potential(images), s, atol=1e-5)
    half = VQAScore.from_pretrained(root, "a red ball", torch_dtype=torch.bfloat16)
    assert next(half.model.parameters()).dtype == torch.bfloat16
    assert half.log_potential(images).dtype == torch.float32 and torch.allclose(half.log_potential(images), s, atol=0.05)


def test_vqa_refuses_an_answer_outside_the_vocabulary(tmp_path):
    import pytest

    from poegen.experts.vlm import VQAScore
    from helpers import tiny_vlm_folder

    with pytest.raises(ValueError, match="answer 'Maybe' is not in the VLM's vocabulary"):
        VQAScore.from_pretrained(tiny_vlm_folder(tmp_path), "a red ball", answer="Maybe")


def test_pickscore_is_scaled_cosine_of_clip_embeddings(tmp_path, monkeypatch):
    import pytest
    from transformers import CLIPModel, CLIPTokenizer

    from poegen.experts.vlm import PickScore

    root = tiny_clip_folder(tmp_path / "clip")
    model = CLIPModel.from_pretrained(root)
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
    model.save_pretrained(tmp_path / "pick")  # like PickScore_v1: weights and config, no tokenizer
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError, match="huggingface-cli download laion/CLIP-ViT-H-14-laion2B-s32B-b79K"):
        PickScore.from_pretrained(str(tmp_path / "pick"), "a red ball")
    pick = PickScore.from_pretrained(str(tmp_path / "pick"), "a red ball", tokenizer=root)
    assert pick.name == "pickscore[a red ball]" and abs(pick.scale - torch.e ** 2) < 1e-4
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    ids = CLIPTokenizer.from_pretrained(root)(["a red ball"], padding="max_length", max_length=8, truncation=True,
                                              return_tensors="pt")
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    with torch.no_grad():
        img = model.get_image_features(pixel_values=((images + 1) / 2 - mean) / std).pooler_output
        txt = model.get_text_features(**ids).pooler_output
    cos = torch.nn.functional.cosine_similarity(img, txt.expand_as(img), dim=-1)
    assert torch.allclose(pick.log_potential(images), torch.e ** 2 * cos, atol=1e-4)


def test_clip_vqa_and_pickscore_potentials_in_a_poe_run(tmp_path):
    import poegen
    from poegen.experts.diffusers import VPUNetExpert
    from poegen.experts.vlm import PickScore, VQAScore
    from helpers import tiny_vlm_folder, tiny_vp_folder

    tiny_vp_folder(tmp_path / "unet")
    prior = VPUNetExpert.from_pretrained(str(tmp_path / "unet"))  # 8x8 images, resized to 16x16 by the scorers
    vqa = VQAScore.from_pretrained(tiny_vlm_folder(tmp_path / "vlm"), "a red ball")
    clip = tiny_clip_folder(tmp_path / "clip")
    pick = PickScore.from_pretrained(clip, "a red ball")
    for potential in (vqa, pick, ClipScore.from_pretrained(clip, "a red ball")):
        r = poegen.sample(poegen.Product([prior], potentials=[potential], lambdas=[3.0]), num_particles=4,
                          num_steps=2, generator=torch.Generator().manual_seed(0))
        assert r.x.shape == (4, 3, 8, 8) and torch.isfinite(r.x).all() and torch.isfinite(r.log_w).all()
        assert r.nfe[potential.name] == 4 * 3 and r.log_Z != 0  # scored at every level; weights moved


def test_vqa_prompt_follows_the_processors_chat_template(tmp_path):
    from transformers import AutoProcessor

    from poegen.experts.vlm import VQAScore
    from helpers import tiny_vlm_folder

    root = tiny_vlm_folder(tmp_path)
    plain = VQAScore.from_pretrained(root, "a red ball")  # no chat template: the Llava-1.5 prompt
    processor = AutoProcessor.from_pretrained(root)
    processor.chat_template = ("{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
                               "<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
                               "{% if add_generation_prompt %} ASSISTANT:{% endif %}")
    processor.save_pretrained(root)
    cache.clear()  # the folder changed under the loaded model
    templated = VQAScore.from_pretrained(root, "a red ball")
    assert torch.equal(templated.input_ids, plain.input_ids)  # the template renders the same prompt
    processor.chat_template = processor.chat_template.replace(" ASSISTANT:", " ASSISTANT: Answer:")
    processor.save_pretrained(root)
    cache.clear()
    longer = VQAScore.from_pretrained(root, "a red ball")
    assert longer.input_ids.shape[1] == plain.input_ids.shape[1] + 2  # and a different template is followed


def test_an_absence_in_a_named_prompt_is_the_vlm_answering_no(tmp_path):
    """'a red ball and no box' on named models: the vqa entry asks about the box too and wants No; its potential
    is log P(No) / (P(No) + P(Yes)), so with the same question asked for Yes the probabilities sum to one."""
    from poegen.experts.vlm import VQAScore
    from poegen.families import _absences
    from poegen.specs import from_prompt
    from helpers import tiny_vlm_folder

    layout = from_prompt("a red ball and no box", compose=True)
    assert [o.phrase for o in layout.objects] == ["a red ball"] and layout.absent == ["box"]
    root = tiny_vlm_folder(tmp_path)
    (no,) = _absences({"kind": "vqa", "path": root, "options": {}}, layout)
    assert no.name == "vqa[not: box]"
    yes = VQAScore.from_pretrained(root, "box", versus="No")
    _, images = _uint8_images(3)
    assert torch.allclose(no.log_potential(images).exp() + yes.log_potential(images).exp(), torch.ones(3), atol=1e-5)
    assert _absences({"kind": "clip", "path": root, "options": {}}, layout) == []  # CLIP cannot say no
    with pytest.raises(ValueError, match="only absent"):
        from_prompt("no box", compose=True)
