"""diffusers experts on tiny models built from configs, saved and loaded back offline."""
import pytest
import torch

import poegen
from poegen.experts.diffusers import VPUNetExpert

from helpers import tiny_flux_folder, tiny_sd_folder, tiny_sdxl_folder, tiny_vp_folder


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
    assert r.nfe[expert.name] == 4 * (1 + 2 * 2)


def test_missing_checkpoint_says_where_and_how(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError, match=r"not found.*huggingface-cli download someone/missing-model"):
        VPUNetExpert.from_pretrained("someone/missing-model")


def test_stable_diffusion_prompt_experts_with_guidance_as_a_product(tmp_path):
    from poegen.experts.diffusers import TextConditionedUNetExpert, vae_decoder

    root = str(tiny_sd_folder(tmp_path))
    red = TextConditionedUNetExpert.from_pretrained(root, "a red ball")
    blue = TextConditionedUNetExpert.from_pretrained(root, "a blue box")
    null = TextConditionedUNetExpert.from_pretrained(root, "")
    assert not torch.allclose(red.text_embeddings, blue.text_embeddings)
    x, sigma = torch.randn(3, 4, 8, 8), torch.tensor(1.5)
    assert not torch.allclose(red.denoise(x, sigma), blue.denoise(x, sigma))
    decode = vae_decoder(root)

    class MeanRed:
        name = "mean-red"

        def log_potential(self, images):
            assert images.shape[1:] == (3, 16, 16)  # potentials see decoded pixels
            return images[:, 0].mean((1, 2))

    product = poegen.Product([null, red, blue], weights=[-1.0, 1.0, 1.0], potentials=[MeanRed()], decode=decode)
    r = poegen.sample(product, num_particles=4, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert r.x.shape == (4, 4, 8, 8) and torch.isfinite(r.x).all()
    assert r.nfe["sd[a red ball]"] == 4 * (1 + 2 * 2) and r.nfe["mean-red"] == 4 * 3


def test_controlnet_expert_on_a_physics_depth_map(tmp_path):
    from diffusers import ControlNetModel, UNet2DConditionModel

    from poegen.experts.diffusers import ControlNetExpert
    from poegen.experts.physics import PhysicsExpert
    from poegen.experts.scene import load_scene

    root = tiny_sd_folder(tmp_path)
    unet = UNet2DConditionModel.from_pretrained(root / "unet")
    ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8)).save_pretrained(tmp_path / "cn")
    physics = PhysicsExpert(load_scene("examples/stacking.yaml"))
    depth = physics.depth()
    assert depth.shape == (32, 32) and depth.max() <= 1 and depth[0, 0] == 0  # sky is far
    box = physics.masks[0] > 0.5
    assert torch.allclose(depth[box], torch.tensor(0.8))  # a box shows its flat front face
    control = torch.nn.functional.interpolate(depth[None, None].expand(1, 3, -1, -1), size=(16, 16))
    expert = ControlNetExpert.from_pretrained(str(root), "a red ball", controlnet=str(tmp_path / "cn"),
                                              control_image=control)
    with torch.no_grad():  # a fresh ControlNet has zero output convolutions: give them weights so it acts
        cn = expert.controlnet
        for conv in [*cn.controlnet_down_blocks, cn.controlnet_mid_block, cn.controlnet_cond_embedding.conv_out]:
            conv.weight.normal_(0, 0.1)
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor(1.0)
    steered = expert.denoise(x, sigma)
    expert.conditioning_scale = 0.0
    plain = expert.denoise(x, sigma)
    expert.conditioning_scale = 1.0
    assert steered.shape == x.shape and torch.isfinite(steered).all()
    r = poegen.sample(poegen.Product([expert]), num_particles=4, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert r.x.shape == (4, 4, 8, 8) and torch.isfinite(r.x).all()
    assert not torch.allclose(steered, plain, atol=1e-4)  # the control image reaches the UNet
    expert.control_image = control.flip(-1)
    assert not torch.allclose(expert.denoise(x, sigma), steered, atol=1e-4)  # and it matters which one


@pytest.mark.parametrize("micro_batch,calls", [(None, 1), (4, 3)])
def test_prompt_experts_on_one_backbone_share_one_call(tmp_path, micro_batch, calls):
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from poegen.experts.diffusers import TextConditionedUNetExpert

    root = tiny_sd_folder(tmp_path)
    base = [TextConditionedUNetExpert.from_pretrained(str(root), p) for p in ("", "a red ball", "a blue box")]
    unet = UNet2DConditionModel.from_pretrained(root / "unet")
    ab = DDPMScheduler.from_pretrained(root / "scheduler").alphas_cumprod
    shared = [TextConditionedUNetExpert(unet, ab, "epsilon", e.text_embeddings, micro_batch=micro_batch, name=e.name)
              for e in base]
    forwards = []
    unet.register_forward_hook(lambda *a: forwards.append(1))
    x, sigma = torch.randn(4, 4, 8, 8), torch.tensor(0.8)
    product = poegen.Product(shared, weights=[-1.0, 1.0, 1.0])
    ev = product.evaluate(x, sigma, torch.ones(1, 4, 8, 8))
    assert len(forwards) == calls  # 3 experts x 4 particles = 12 rows: one call, or ceil(12 / 4) micro-batches
    separate = sum(w * (e.denoise(x, sigma) - x) for w, e in zip(product.weights, shared)) + x
    assert torch.allclose(ev.x0, separate, atol=1e-5)
    assert product.nfe == {e.name: 4 for e in shared}


def test_generate_with_named_local_experts(tmp_path, capsys):
    from PIL import Image

    from poegen.cli import main
    from helpers import tiny_clip_folder

    sd, clip = tiny_sd_folder(tmp_path / "sd"), tiny_clip_folder(tmp_path / "clip")
    out = tmp_path / "img.png"
    assert main(["generate", "a red ball", "--expert", f"sd:{sd}", "--potential", f"clip:{clip}", "--guidance", "3",
                 "--steps", "2", "--particles", "2", "--quiet", "--out", str(out)]) == 0
    assert Image.open(tmp_path / "img_raw.png").size == (16, 16)  # decoded by the VAE: pixels, not latents
    assert main(["generate", "a red ball", "--expert", f"sd15:{sd}"]) == 2
    assert "KIND one of sd, sdxl, sd3, flux, controlnet, sd-inpaint, flux-fill, wan, unet" in capsys.readouterr().err
    assert main(["experts"]) == 0 and "clip" in capsys.readouterr().out


def test_flow_transformer_expert_matches_the_rectified_flow_formula(tmp_path):
    from diffusers import SD3Transformer2DModel

    from poegen.experts.diffusers import FlowTransformerExpert

    torch.manual_seed(0)
    model = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
                                  attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                  caption_projection_dim=16, pooled_projection_dim=16, pos_embed_max_size=8)
    model.save_pretrained(tmp_path / "transformer")
    text, pooled = torch.randn(1, 5, 32), torch.randn(1, 16)
    expert = FlowTransformerExpert.from_pretrained(str(tmp_path), text, pooled)
    t = 0.4
    sigma = torch.tensor(t / (1 - t))
    x0, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    x_flow = (1 - t) * x0 + t * eps
    with torch.no_grad():
        v = model(hidden_states=x_flow, timestep=torch.full((3,), 1000 * t), encoder_hidden_states=text.expand(3, -1, -1),
                  pooled_projections=pooled.expand(3, -1)).sample
    assert torch.allclose(expert.denoise(x0 + sigma * eps, sigma), x_flow - t * v, atol=1e-5)
    r = poegen.sample(poegen.Product([expert]), num_particles=4, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert r.x.shape == (4, 4, 8, 8) and torch.isfinite(r.x).all() and r.nfe[expert.name] == 4 * (1 + 2 * 2)


class MeanRed:
    """A potential on decoded pixels (asserts it sees them): the mean of the red channel."""

    name = "mean-red"

    def log_potential(self, images):
        assert images.shape[1:] == (3, 16, 16)
        return images[:, 0].mean((1, 2))


def _sdxl_text_by_hand(root, prompt):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    hidden = []
    for sub, cls in (("", CLIPTextModel), ("_2", CLIPTextModelWithProjection)):
        tokenizer = CLIPTokenizer.from_pretrained(root / f"tokenizer{sub}")
        ids = tokenizer([prompt], padding="max_length", max_length=8, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            out = cls.from_pretrained(root / f"text_encoder{sub}")(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
    return torch.cat(hidden, -1), out.text_embeds


def test_sdxl_expert_matches_the_unet_with_both_encoders_and_time_ids(tmp_path):
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

    from poegen.experts.diffusers import SDXLExpert

    root = tiny_sdxl_folder(tmp_path)
    red, null = SDXLExpert.load_prompts(str(root), ["a red ball", ""])
    assert red.unet is null.unet and red.batch_key == null.batch_key and red.shape == (4, 8, 8)
    hidden, pooled = _sdxl_text_by_hand(root, "a red ball")
    assert hidden.shape == (1, 8, 64) and pooled.shape == (1, 16)
    assert torch.allclose(red.text_embeddings, hidden) and torch.allclose(red.pooled_embeddings, pooled)
    assert torch.equal(null.text_embeddings, torch.zeros(1, 8, 64))  # SDXL's empty prompt: zeros
    assert torch.equal(null.pooled_embeddings, torch.zeros(1, 16))
    time_ids = torch.tensor([[16.0, 16, 0, 0, 16, 16]])  # original size, crop corner, target size: 8 latents x 2
    assert torch.equal(red.time_ids, time_ids)
    ab = EulerDiscreteScheduler.from_pretrained(root / "scheduler").alphas_cumprod
    assert torch.allclose(red.alphas_cumprod, ab.double())
    i = 500
    sigma = ((1 - ab[i]) / ab[i]).sqrt()
    a, s = ab[i].sqrt(), (1 - ab[i]).sqrt()
    x0, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    unet = UNet2DConditionModel.from_pretrained(root / "unet")
    with torch.no_grad():
        eps_hat = unet(a * x0 + s * eps, torch.full((3,), float(i)), encoder_hidden_states=hidden.expand(3, -1, -1),
                       added_cond_kwargs={"text_embeds": pooled.expand(3, -1), "time_ids": time_ids.expand(3, -1)}).sample
    expected = (a * x0 + s * eps - s * eps_hat) / a
    assert torch.allclose(red.denoise(x0 + sigma * eps, sigma), expected, atol=1e-4)
    cropped = SDXLExpert.from_pretrained(str(root), "a red ball", original_size=(32, 32), crop_top_left=(4, 0))
    assert torch.equal(cropped.time_ids, torch.tensor([[32.0, 32, 4, 0, 16, 16]]))
    assert not torch.allclose(cropped.denoise(x0, sigma), red.denoise(x0, sigma), atol=1e-5)  # time ids reach the UNet


@pytest.mark.parametrize("micro_batch,calls", [(None, 1), (4, 3)])
def test_sdxl_prompts_on_one_unet_share_one_call_and_run_poe(tmp_path, micro_batch, calls):
    from poegen.experts.diffusers import SDXLExpert, vae_decoder

    root = tiny_sdxl_folder(tmp_path)
    experts = SDXLExpert.load_prompts(str(root), ["", "a red ball", "a blue box"], micro_batch=micro_batch)
    forwards = []
    experts[0].unet.register_forward_hook(lambda *a: forwards.append(1))
    x, sigma = torch.randn(4, 4, 8, 8), torch.tensor(0.8)
    product = poegen.Product(experts, weights=[-1.0, 1.0, 1.0], potentials=[MeanRed()], decode=vae_decoder(str(root)))
    ev = product.evaluate(x, sigma, torch.ones(1, 4, 8, 8))
    assert len(forwards) == calls  # 12 rows: one call, or ceil(12 / 4) micro-batches
    separate = sum(w * (e.denoise(x, sigma) - x) for w, e in zip(product.weights, experts)) + x
    assert torch.allclose(ev.x0, separate, atol=1e-5)
    forwards.clear()
    r = poegen.sample(product, num_particles=4, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert r.x.shape == (4, 4, 8, 8) and torch.isfinite(r.x).all()
    assert len(forwards) == calls * (1 + 2 * 2)  # one batched call (per micro-batch) per evaluation
    assert r.nfe["sdxl[a red ball]"] == 4 * (1 + 2 * 2) and r.nfe["mean-red"] == 4 * 3


def test_flux_expert_matches_the_rectified_flow_formula_on_packed_latents(tmp_path):
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, T5EncoderModel

    from poegen.experts.diffusers import FluxExpert, pack_latents, unpack_latents

    root = tiny_flux_folder(tmp_path)
    expert = FluxExpert.from_pretrained(str(root), "a red ball")
    assert expert.shape == (4, 8, 8) and expert.guidance == 3.5  # 16 px / VAE factor 2; 16 packed channels
    pad = dict(padding="max_length", max_length=8, truncation=True, return_tensors="pt")
    ids = CLIPTokenizer.from_pretrained(root / "tokenizer")(["a red ball"], **pad).input_ids
    t5_ids = AutoTokenizer.from_pretrained(root / "tokenizer_2")(["a red ball"], **pad).input_ids
    assert (t5_ids[0, :3] > 2).all()  # the words are in the T5 vocabulary, not unknown
    with torch.no_grad():
        pooled = CLIPTextModel.from_pretrained(root / "text_encoder")(ids).pooler_output
        hidden = T5EncoderModel.from_pretrained(root / "text_encoder_2")(t5_ids).last_hidden_state
    assert torch.allclose(expert.pooled_projections, pooled) and torch.allclose(expert.encoder_hidden_states, hidden)
    t = 0.4
    sigma = torch.tensor(t / (1 - t))
    x0, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    x_flow = (1 - t) * x0 + t * eps
    packed = FluxPipeline._pack_latents(x_flow, 3, 4, 8, 8)  # diffusers' own packing and position ids
    assert torch.equal(pack_latents(x_flow), packed) and torch.equal(unpack_latents(packed, 4, 8, 8), x_flow)
    model = FluxTransformer2DModel.from_pretrained(root / "transformer")
    with torch.no_grad():
        v = model(hidden_states=packed, encoder_hidden_states=hidden.expand(3, -1, -1),
                  pooled_projections=pooled.expand(3, -1),
                  timestep=torch.full((3,), t), guidance=torch.full((3,), 3.5),
                  img_ids=FluxPipeline._prepare_latent_image_ids(3, 4, 4, "cpu", torch.float32),
                  txt_ids=torch.zeros(8, 3)).sample
    v = FluxPipeline._unpack_latents(v, 16, 16, 2)
    x0_hat = expert.denoise(x0 + sigma * eps, sigma)
    assert torch.allclose(x0_hat, x_flow - t * v, atol=1e-5)
    expert.guidance = 1.0
    assert not torch.allclose(expert.denoise(x0 + sigma * eps, sigma), x0_hat, atol=1e-5)  # guidance is embedded
    half = FluxExpert.from_pretrained(str(root), "a red ball", torch_dtype=torch.bfloat16)
    assert next(half.transformer.parameters()).dtype == torch.bfloat16
    out = half.denoise(x0 + sigma * eps, sigma)
    assert out.dtype == torch.float32 and (out - x0_hat).abs().max() < 0.1  # bf16 backbone, fp32 engine state


def test_flux_prompts_share_one_call_and_run_poe(tmp_path):
    from poegen.experts.diffusers import FluxExpert, vae_decoder

    root = tiny_flux_folder(tmp_path, guidance_embeds=False)  # FLUX.1-schnell style: no guidance embedding
    experts = FluxExpert.load_prompts(str(root), ["a red ball", "a blue box"])
    assert experts[0].guidance is None and experts[0].transformer is experts[1].transformer
    forwards = []
    experts[0].transformer.register_forward_hook(lambda *a: forwards.append(1))
    x, sigma = torch.randn(4, 4, 8, 8), torch.tensor(0.8)
    product = poegen.Product(experts, weights=[0.5, 0.5], potentials=[MeanRed()], decode=vae_decoder(str(root)))
    ev = product.evaluate(x, sigma, torch.ones(1, 4, 8, 8))
    assert len(forwards) == 1
    separate = 0.5 * experts[0].denoise(x, sigma) + 0.5 * experts[1].denoise(x, sigma)
    assert torch.allclose(ev.x0, separate, atol=1e-5)
    r = poegen.sample(product, num_particles=4, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert r.x.shape == (4, 4, 8, 8) and torch.isfinite(r.x).all() and r.nfe["mean-red"] == 4 * 3


def test_flux_vae_decoder_undoes_scaling_and_shift(tmp_path):
    from diffusers import AutoencoderKL

    from poegen.experts.diffusers import vae_decoder

    root = tiny_flux_folder(tmp_path)
    z = torch.randn(2, 4, 8, 8)
    vae = AutoencoderKL.from_pretrained(root / "vae")
    with torch.no_grad():
        expected = vae.decode(z / 0.3611 + 0.1159).sample.clamp(-1, 1)
    assert torch.allclose(vae_decoder(str(root))(z), expected, atol=1e-5)


def test_sd_registry_loads_one_unet_for_the_prompt_and_the_empty_prompt(tmp_path):
    from poegen.families import named_product as build

    root = str(tiny_sd_folder(tmp_path))
    product = build("a red ball", [f"sd:{root}"], guidance=7.5)
    experts, weights = product.experts, product.weights
    assert [e.name for e in experts] == ["sd[a red ball]", "sd[]"] and weights == [7.5, -6.5]
    assert experts[0].unet is experts[1].unet and experts[0].batch_key == experts[1].batch_key
    assert not torch.equal(experts[0].text_embeddings, experts[1].text_embeddings)
