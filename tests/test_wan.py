"""The wan kind: Wan 2.1 text-to-video, image-to-video and VACE on tiny folders saved by diffusers' own pipelines;
poegen's one-particle Euler sample on the pipeline's sigmas must give the pipeline's latents."""
import copy
import functools

import numpy as np
import pytest
import torch

import poegen
from poegen.experts.wan import (OPTIONS, WanExpert, WanImageToVideoExpert, WanVACEExpert, latent_shape, load_wan,
                                wan_decoder)

from helpers import word_tokenizer

PROMPT, L, FRAMES, SIDE = "a red ball", 16, 9, 32  # L: tokens; 9 frames of 32 x 32 pixels: latents (16, 3, 4, 4)
FLOW = [0.9, 0.75, 0.5, 0.25]  # flow times below 1 (t = 1 is an infinite VE sigma); the scheduler shifts them
TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, out_channels=16, text_dim=32,
            freq_dim=32, ffn_dim=32, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)


def _common():
    """Tokenizer, UMT5 encoder (32 wide), a Wan VAE (z_dim 16, 8x spatial and 4x temporal) and a shifted flow scheduler."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    tok = word_tokenizer(["a", "red", "ball", "blue", "box", "dance"], ["<unk>", "<pad>", "</s>"], pad_token="<pad>",
                         eos_token="</s>", model_max_length=L)
    text = UMT5EncoderModel(UMT5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
                                       pad_token_id=1, eos_token_id=2))
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    return dict(tokenizer=tok, text_encoder=text, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))


def save_folders(root, kinds=("t2v", "i2v", "vace")):
    """Folders root/KIND saved by WanPipeline (t2v), WanImageToVideoPipeline (i2v, with a CLIP image encoder) and
    WanVACEPipeline (vace); each kind's weights are the same whichever others are built."""
    from diffusers import (WanImageToVideoPipeline, WanPipeline, WanTransformer3DModel, WanVACEPipeline,
                           WanVACETransformer3DModel)
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    if "t2v" in kinds:
        torch.manual_seed(0)
        WanPipeline(transformer=WanTransformer3DModel(in_channels=16, num_layers=2, **TINY), **_common()
                    ).save_pretrained(root / "t2v")
    if "i2v" in kinds:
        torch.manual_seed(1)
        clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                                image_size=32, intermediate_size=16, patch_size=8))
        WanImageToVideoPipeline(transformer=WanTransformer3DModel(in_channels=36, num_layers=2, image_dim=8, **TINY),
                                image_encoder=clip, image_processor=CLIPImageProcessor(crop_size=32, size=32),
                                **_common()).save_pretrained(root / "i2v")
    if "vace" in kinds:
        torch.manual_seed(2)
        WanVACEPipeline(transformer=WanVACETransformer3DModel(in_channels=16, num_layers=3, vace_layers=[0, 2],
                                                              vace_in_channels=96, **TINY), **_common()
                        ).save_pretrained(root / "vace")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Three folders saved by WanPipeline, WanImageToVideoPipeline (with a CLIP image encoder) and WanVACEPipeline."""
    return save_folders(tmp_path_factory.mktemp("wan"))


@pytest.fixture(autouse=True)
def _ftfy(monkeypatch):
    """Without ftfy installed, diffusers' image-to-video and VACE pipelines fail on an unguarded ``ftfy.fix_text``
    (WanPipeline checks first): give them the identity it is on plain ASCII prompts."""
    import importlib.util
    import types

    if importlib.util.find_spec("ftfy") is None:
        from diffusers.pipelines.wan import pipeline_wan_i2v, pipeline_wan_vace
        for module in (pipeline_wan_i2v, pipeline_wan_vace):
            monkeypatch.setattr(module, "ftfy", types.SimpleNamespace(fix_text=lambda text: text), raising=False)


def _pipeline(cls, folder):
    """The pipeline loaded back from ``folder``, its scheduler run on FLOW (Wan pipelines take no ``sigmas=``), and
    the VE sigmas t / (1 - t) of its shifted table without the final 0."""
    pipe = cls.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    table = copy.deepcopy(pipe.scheduler)
    table.set_timesteps(sigmas=FLOW)
    t = table.sigmas[:-1].double()
    assert float(t[0]) < 1 and float(table.sigmas[-1]) == 0
    pipe.scheduler.set_timesteps = functools.partial(pipe.scheduler.set_timesteps, sigmas=FLOW)
    return pipe, t / (1 - t)


def _engine(experts, weights, sigmas, seed=0):
    """poegen's ancestral sampler, one particle, no potentials, Euler steps on ``sigmas``; and its first draw."""
    r = poegen.sample(poegen.Product(experts, weights=weights), sampler="ancestral", proposal="euler", mcmc_steps=0,
                      num_particles=1, num_steps=len(sigmas) - 1, sigmas=[float(s) for s in sigmas],
                      generator=torch.Generator().manual_seed(seed))
    s0 = torch.tensor(float(sigmas[0]))
    return r.x, s0 * torch.randn((1, *experts[0].shape), generator=torch.Generator().manual_seed(seed))


def _frames(seed, n=FRAMES):
    """n random RGB frames as PIL images and as the (1, 3, n, H, W) tensor in [-1, 1] the pipelines make of them."""
    from PIL import Image

    arrays = np.random.default_rng(seed).integers(0, 256, (n, SIDE, SIDE, 3), dtype=np.uint8)
    video = torch.from_numpy(arrays.astype(np.float32) / 255.0).permute(3, 0, 1, 2)[None] * 2 - 1
    return [Image.fromarray(a) for a in arrays], video


def _check(name, ours, theirs, other):
    diff = float((ours - theirs).abs().max())
    print(f"wan {name} parity: max abs diff {diff:.3e} (latents {tuple(theirs.shape)})")
    assert diff <= 1e-4, diff
    assert float((other - theirs).abs().max()) > 1e-2  # the conditioning matters: the match is not vacuous


def test_text_to_video_matches_wan_pipeline_with_guidance_as_a_product(folders):
    from diffusers import WanPipeline

    w = 4.0
    cond, uncond = WanExpert.load_prompts(str(folders / "t2v"), [PROMPT, ""], num_frames=FRAMES, height=SIDE,
                                          width=SIDE, max_sequence_length=L)
    assert cond.shape == (16, 3, 4, 4) and cond.transformer is uncond.transformer
    pipe, sigmas = _pipeline(WanPipeline, folders / "t2v")
    with torch.no_grad():
        emb, neg = pipe.encode_prompt(PROMPT, max_sequence_length=L)
    assert torch.equal(cond.prompt_embeds, emb) and torch.equal(uncond.prompt_embeds, neg)
    ours, x = _engine([cond, uncond], [w, 1 - w], sigmas)
    run = functools.partial(pipe, PROMPT, height=SIDE, width=SIDE, num_frames=FRAMES, num_inference_steps=len(FLOW),
                            latents=x / (1 + sigmas[0]).float(), output_type="latent", max_sequence_length=L)
    theirs = run(guidance_scale=w).frames
    _check("t2v", ours, theirs, run(guidance_scale=1.0).frames)


def test_image_to_video_matches_wan_i2v_pipeline(folders):
    from diffusers import WanImageToVideoPipeline

    frames, video = _frames(3, 1)
    (expert,) = WanImageToVideoExpert.load_prompts(str(folders / "i2v"), [PROMPT], video[:, :, 0], num_frames=FRAMES,
                                                   max_sequence_length=L)
    assert expert.condition.shape == (1, 20, 3, 4, 4) and expert.image_embeds.shape == (1, 17, 8)
    assert torch.equal(expert.condition[:, :4, 0], torch.ones(1, 4, 4, 4)) and not expert.condition[:, :4, 1:].any()
    pipe, sigmas = _pipeline(WanImageToVideoPipeline, folders / "i2v")
    ours, x = _engine([expert], [1.0], sigmas)
    run = functools.partial(pipe, prompt=PROMPT, height=SIDE, width=SIDE, num_frames=FRAMES, guidance_scale=1.0,
                            num_inference_steps=len(FLOW), latents=x / (1 + sigmas[0]).float(), output_type="latent",
                            max_sequence_length=L)
    _check("i2v", ours, run(image=frames[0]).frames, run(image=_frames(4, 1)[0][0]).frames)


def test_vace_control_matches_wan_vace_pipeline_and_batches_particles(folders):
    from diffusers import WanVACEPipeline
    from PIL import Image

    frames, video = _frames(5)
    keep = np.zeros((SIDE, SIDE), dtype=np.uint8)
    keep[:, 13:] = 255  # generate (1) right of column 13, keep the video left of it: not aligned to the latents
    mask = torch.from_numpy(keep.astype(np.float32) / 255)[None, None, None].expand(1, 1, FRAMES, -1, -1)
    scale = [0.7, 1.3]
    (expert,) = WanVACEExpert.load_prompts(str(folders / "vace"), [PROMPT], video, mask, conditioning_scale=scale,
                                           max_sequence_length=L)
    assert expert.shape == (16, 3, 4, 4) and expert.control.shape == (1, 96, 3, 4, 4)
    pipe, sigmas = _pipeline(WanVACEPipeline, folders / "vace")
    ours, x = _engine([expert], [1.0], sigmas)
    run = functools.partial(pipe, prompt=PROMPT, video=frames, mask=[Image.fromarray(keep)] * FRAMES, height=SIDE,
                            width=SIDE, num_frames=FRAMES, guidance_scale=1.0, num_inference_steps=len(FLOW),
                            latents=x / (1 + sigmas[0]).float(), output_type="latent", max_sequence_length=L)
    _check("vace", ours, run(conditioning_scale=scale).frames, run(conditioning_scale=0.0).frames)
    # particles are batched (the pipeline runs one clip): 3 rows in one call equal 3 one-row calls
    calls = []
    expert.transformer.register_forward_hook(lambda *a: calls.append(1))
    z, s = torch.randn(3, *expert.shape, generator=torch.Generator().manual_seed(1)), torch.tensor([0.5, 2.0, 9.0])
    with torch.no_grad():
        batched = expert.denoise(z, s)
        assert len(calls) == 1
        single = torch.cat([expert.denoise(z[i:i + 1], s[i:i + 1]) for i in range(3)])
    assert float((batched - single).abs().max()) < 1e-5


def test_sizes_kinds_and_decoding(folders):
    t2v = str(folders / "t2v")
    with pytest.raises(ValueError, match="num_frames 8 must be 4k"):
        latent_shape(t2v, 8, SIDE, SIDE)
    with pytest.raises(ValueError, match="height 24 must be a positive multiple of 16"):
        WanExpert.load_prompts(t2v, [PROMPT], num_frames=FRAMES, height=24, width=SIDE)
    with pytest.raises(ValueError, match="image-to-video folder"):
        WanExpert.load_prompts(str(folders / "i2v"), [PROMPT], num_frames=FRAMES, height=SIDE, width=SIDE)
    with pytest.raises(ValueError, match=r"wan options \['fps'\]"):
        load_wan(t2v, [PROMPT], fps=8)
    with pytest.raises(ValueError, match="needs a VACE folder"):
        load_wan(t2v, [PROMPT], video=torch.zeros(1, 3, FRAMES, SIDE, SIDE))
    with pytest.raises(ValueError, match=r"image values span .* \(for a video in \[0, 1\] pass 2 \* video - 1\)"):
        load_wan(str(folders / "i2v"), [PROMPT], image=torch.full((1, 3, SIDE, SIDE), 2.0))
    small = dict(num_frames=5, height=16, width=16, max_sequence_length=L)
    with pytest.raises(ValueError, match="conditioning_scale has 3 values; give one number or 2"):
        load_wan(str(folders / "vace"), [PROMPT], conditioning_scale=[1, 1, 1], **small)
    with pytest.raises(ValueError, match="this is a VACE folder"):
        WanExpert.load_prompts(str(folders / "vace"), [PROMPT], **small)
    assert type(load_wan(str(folders / "vace"), [PROMPT], **small)[0]) is WanVACEExpert
    (i2v,) = load_wan(str(folders / "i2v"), [PROMPT], image=_frames(6, 1)[1][:, :, 0], max_sequence_length=L)
    assert type(i2v) is WanImageToVideoExpert and i2v.shape == (16, 21, 4, 4)  # the default 81 frames
    a, b = load_wan(t2v, [PROMPT, "a blue box"], **small)
    assert a.batch_key == b.batch_key and a.shape == (16, 2, 2, 2) and set(OPTIONS) >= set(small)
    decode = wan_decoder(t2v)
    with torch.no_grad():
        clips = decode(torch.randn(2, *a.shape))
    assert clips.shape == (2, 3, 5, 16, 16) and float(clips.abs().max()) <= 1
