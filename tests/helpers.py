"""Test helpers (``from helpers import ...``: pytest puts tests/ on sys.path; scripts/bench_*.py insert it):
tiny models built from configs, saved to a folder and loaded back the way a user's checkpoint is, used by the
tests and the benchmarks, nothing downloaded; and ``Case``, one row of the fault battery."""
import importlib.util
from pathlib import Path

import torch


def load_script(name: str):
    """scripts/<name>.py imported as a module (its functions, without running main)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _clip_vocab():
    words = ["a", "red", "ball", "blue", "box"]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{w + "</w>": i + 2 for i, w in enumerate(words)}}
    for c in "abdelorux":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    return vocab


def tiny_vp_folder(tmp_path: Path, prediction_type: str = "epsilon"):
    """unet/ and scheduler/ of a pixel-space DDPM model with random weights; returns the UNet."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    unet.save_pretrained(tmp_path / "unet")
    DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type).save_pretrained(tmp_path / "scheduler")
    return unet


def tiny_sd_folder(tmp_path: Path):
    """unet/, scheduler/, tokenizer/, text_encoder/, vae/ of a Stable-Diffusion-shaped model with random weights."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    vocab = _clip_vocab()
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=8)
    tok.save_pretrained(tmp_path / "tokenizer")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                 num_attention_heads=4, max_position_embeddings=8, bos_token_id=0, eos_token_id=1,
                                 pad_token_id=1)).save_pretrained(tmp_path / "text_encoder")
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                         attention_head_dim=4, norm_num_groups=4).save_pretrained(tmp_path / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(tmp_path / "scheduler")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8), norm_num_groups=4,
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  sample_size=16).save_pretrained(tmp_path / "vae")
    return tmp_path


def tiny_clip_folder(tmp_path: Path):
    """A CLIPModel with hidden size 32 and its tokenizer in one folder; returns the folder."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    torch.manual_seed(0)
    vocab = _clip_vocab()
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=8).save_pretrained(tmp_path)
    config = CLIPConfig(text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=8, bos_token_id=0,
                                         eos_token_id=1, pad_token_id=1),
                        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=16, patch_size=4),
                        projection_dim=16)
    CLIPModel(config).save_pretrained(tmp_path)
    return str(tmp_path)


def _tiny_clip_text_config(vocab, projection_dim=None):
    from transformers import CLIPTextConfig

    extra = {} if projection_dim is None else {"projection_dim": projection_dim}
    return CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=8, bos_token_id=0, eos_token_id=1,
                          pad_token_id=1, **extra)


def _tiny_vae(path: Path, **kwargs):
    from diffusers import AutoencoderKL

    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8), norm_num_groups=4,
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  sample_size=16, **kwargs).save_pretrained(path)


def tiny_sdxl_folder(tmp_path: Path):
    """An SDXL-shaped folder with random weights: a text_time UNet (8x8 latents), two CLIP text encoders
    (hidden 32 each, the second with a 16-d projection), their tokenizers, an Euler scheduler and a VAE."""
    import json

    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    vocab = _clip_vocab()
    for sub in ("tokenizer", "tokenizer_2"):
        CLIPTokenizer(vocab=vocab, merges=[], model_max_length=8).save_pretrained(tmp_path / sub)
    CLIPTextModel(_tiny_clip_text_config(vocab)).save_pretrained(tmp_path / "text_encoder")
    CLIPTextModelWithProjection(_tiny_clip_text_config(vocab, 16)).save_pretrained(tmp_path / "text_encoder_2")
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
                         attention_head_dim=4, norm_num_groups=4, addition_embed_type="text_time",
                         addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + 6 * 8,
                         ).save_pretrained(tmp_path / "unet")
    EulerDiscreteScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                           beta_end=0.012).save_pretrained(tmp_path / "scheduler")
    _tiny_vae(tmp_path / "vae", scaling_factor=0.13025)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline",
                                                           "force_zeros_for_empty_prompt": True}))
    return tmp_path


def word_tokenizer(words, specials, **kwargs):
    """A ``PreTrainedTokenizerFast`` over whole words (split at whitespace and punctuation), built in memory:
    ids are specials first, then words; anything else is the first special (the unknown token)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Punctuation, Sequence, Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(dict.fromkeys([*specials, *words]))}
    tok = Tokenizer(WordLevel(vocab, unk_token=specials[0]))
    tok.pre_tokenizer = Sequence([Whitespace(), Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=specials[0], **kwargs)


def tiny_flux_folder(tmp_path: Path, guidance_embeds: bool = True):
    """A FLUX-shaped folder with random weights: a FluxTransformer2DModel on 4-channel latents (16 packed
    channels), CLIP (pooled, 32-d) and T5 (32-d, 8 tokens) text encoders with their tokenizers, and a VAE
    with a shift factor (latents 8x8 for 16x16 pixels)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    torch.manual_seed(0)
    vocab = _clip_vocab()
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=8).save_pretrained(tmp_path / "tokenizer")
    CLIPTextModel(_tiny_clip_text_config(vocab)).save_pretrained(tmp_path / "text_encoder")
    t5_tok = word_tokenizer(["a", "red", "ball", "blue", "box"], ["<unk>", "<pad>", "</s>"], pad_token="<pad>",
                            eos_token="</s>", model_max_length=8)
    t5_tok.save_pretrained(tmp_path / "tokenizer_2")
    T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
                            pad_token_id=1, eos_token_id=2)).save_pretrained(tmp_path / "text_encoder_2")
    FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                           num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                           guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6),
                           ).save_pretrained(tmp_path / "transformer")
    FlowMatchEulerDiscreteScheduler().save_pretrained(tmp_path / "scheduler")
    _tiny_vae(tmp_path / "vae", scaling_factor=0.3611, shift_factor=0.1159)
    return tmp_path


def tiny_flux_pipeline(root: Path):
    """A FluxPipeline on a ``tiny_flux_folder``'s components, each loaded from its subfolder, without progress bars."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, T5EncoderModel

    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(root / "scheduler"),
                        vae=AutoencoderKL.from_pretrained(root / "vae"),
                        text_encoder=CLIPTextModel.from_pretrained(root / "text_encoder"),
                        tokenizer=CLIPTokenizer.from_pretrained(root / "tokenizer"),
                        text_encoder_2=T5EncoderModel.from_pretrained(root / "text_encoder_2"),
                        tokenizer_2=AutoTokenizer.from_pretrained(root / "tokenizer_2"),
                        transformer=FluxTransformer2DModel.from_pretrained(root / "transformer"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_vlm_folder(tmp_path: Path):
    """A Llava-shaped image-text-to-text VLM with random weights in one folder: a CLIP vision tower (16x16
    images, 4x4 patches: 16 image tokens), a 2-layer Llama, and a LlavaProcessor over a word tokenizer
    that knows "Yes", "No" and the words of VQAScore's question. Returns the folder."""
    from tokenizers import AddedToken
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    torch.manual_seed(0)
    words = ["USER", "ASSISTANT", ":", "?", '"', ".", "Does", "this", "figure", "show", "a", "red", "ball", "blue",
             "box", "Yes", "No", "Please", "answer", "yes", "or", "no"]
    tok = word_tokenizer(words, ["<unk>", "<s>", "</s>", "<pad>"], bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tok.add_tokens([AddedToken("<image>", special=True)])
    LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
                   tokenizer=tok, patch_size=4, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1).save_pretrained(tmp_path)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4, image_size=16, patch_size=4),
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=32, intermediate_size=37,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=1, eos_token_id=2, pad_token_id=3),
        image_token_index=tok.convert_tokens_to_ids("<image>"))
    LlavaForConditionalGeneration(config).save_pretrained(tmp_path)
    return str(tmp_path)


def tiny_controlnet_folder(tmp_path: Path, sd_folder: Path):
    """A ControlNetModel for the tiny SD folder's UNet (its weights copied, a 2-level conditioning embedding that
    halves 16x16 control images to the 8x8 latents), with its zero-initialised output convolutions given small
    random weights so the control image acts; saved to ``tmp_path``, which is returned as a string."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(Path(sd_folder) / "unet")
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
    with torch.no_grad():
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]:
            conv.weight.normal_(0, 0.1)
    net.save_pretrained(tmp_path)
    return str(tmp_path)


def tiny_owlv2_folder(tmp_path: Path):
    """An OWLv2 detector with random weights and its Owlv2Processor in one folder: text and vision towers of
    hidden size 32 (32x32 images, 8x8 patches: 16 boxes), a CLIP tokenizer laid out like CLIP's own ("!" is the
    pad id 0, end of text the largest id, as OWLv2's query mask and pooling expect). Returns the folder."""
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    torch.manual_seed(0)
    vocab = {"!": 0}
    for token in _clip_vocab():
        if not token.startswith("<|"):
            vocab[token] = len(vocab)
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16, pad_token="!")
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 32, "width": 32}),
                   tokenizer=tok).save_pretrained(tmp_path)
    config = Owlv2Config(text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                          num_attention_heads=4, max_position_embeddings=16, pad_token_id=0,
                                          bos_token_id=len(vocab) - 2, eos_token_id=len(vocab) - 1),
                         vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                            num_attention_heads=4, image_size=32, patch_size=8),
                         projection_dim=32)  # the class head compares patches with text embeds of the text width
    Owlv2ForObjectDetection(config).save_pretrained(tmp_path)
    return str(tmp_path)


def tiny_sd3_folder(tmp_path: Path, t5: bool = True):
    """A Stable-Diffusion-3-shaped folder with random weights, saved by ``StableDiffusion3Pipeline`` itself: an
    SD3Transformer2DModel on 8x8 latents of 4 channels, two CLIP text encoders with projections (hidden 32 each,
    pooled 16 + 16), a T5 encoder 80 wide (the joint attention width; CLIP's 64 are zero-padded to it), their
    tokenizers (8 tokens), a shifted flow-match scheduler and a VAE with a shift factor (16x16 pixels).
    ``t5=False`` leaves text_encoder_3/ and tokenizer_3/ out (the pipeline then uses zeros)."""
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel

    torch.manual_seed(0)
    vocab = _clip_vocab()
    parts = {}
    for i, sub in enumerate(("", "_2")):
        parts[f"tokenizer{sub}"] = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=8)
        parts[f"text_encoder{sub}"] = CLIPTextModelWithProjection(_tiny_clip_text_config(vocab, 16))
    parts["tokenizer_3"] = parts["text_encoder_3"] = None
    if t5:
        parts["tokenizer_3"] = word_tokenizer(["a", "red", "ball", "blue", "box"], ["<unk>", "<pad>", "</s>"],
                                              pad_token="<pad>", eos_token="</s>", model_max_length=8)
        parts["text_encoder_3"] = T5EncoderModel(T5Config(vocab_size=len(parts["tokenizer_3"]), d_model=80, d_kv=8,
                                                          d_ff=37, num_layers=1, num_heads=4, pad_token_id=1,
                                                          eos_token_id=2))
    parts["transformer"] = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4,
                                                 num_layers=1, attention_head_dim=8, num_attention_heads=2,
                                                 joint_attention_dim=80, caption_projection_dim=16,
                                                 pooled_projection_dim=32, pos_embed_max_size=8)
    _tiny_vae(tmp_path / "vae", scaling_factor=1.5305, shift_factor=0.0609)
    parts["vae"] = AutoencoderKL.from_pretrained(tmp_path / "vae")
    parts["scheduler"] = FlowMatchEulerDiscreteScheduler(shift=3.0)
    StableDiffusion3Pipeline(**parts).save_pretrained(tmp_path)
    return tmp_path


def tiny_sd_inpaint_folder(tmp_path: Path):
    """A Stable-Diffusion-inpainting-shaped folder: ``tiny_sd_folder`` with a UNet of 9 input channels (latents,
    mask, masked image latents) and 4 output channels; returns the folder."""
    from diffusers import UNet2DConditionModel

    tiny_sd_folder(tmp_path)
    torch.manual_seed(1)
    UNet2DConditionModel(sample_size=8, in_channels=9, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                         attention_head_dim=4, norm_num_groups=4).save_pretrained(tmp_path / "unet")
    return tmp_path


def tiny_flux_fill_folder(tmp_path: Path):
    """A FLUX.1-Fill-shaped folder with random weights, saved by ``FluxFillPipeline`` itself: the parts of
    ``tiny_flux_folder`` with a transformer taking 48 channels (16 packed latents, 16 packed masked-image latents,
    16 for the mask: 2x2 pixels per latent unshuffled, then packed) and giving 16 (latents 8x8 for 16x16 pixels)."""
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxFillPipeline,
                           FluxTransformer2DModel)
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, T5EncoderModel

    tiny_flux_folder(tmp_path)
    torch.manual_seed(1)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=48, out_channels=16, num_layers=1,
                                         num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                                         joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                                         axes_dims_rope=(4, 6, 6))
    FluxFillPipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path / "scheduler"),
                     vae=AutoencoderKL.from_pretrained(tmp_path / "vae"),
                     text_encoder=CLIPTextModel.from_pretrained(tmp_path / "text_encoder"),
                     tokenizer=CLIPTokenizer.from_pretrained(tmp_path / "tokenizer"),
                     text_encoder_2=T5EncoderModel.from_pretrained(tmp_path / "text_encoder_2"),
                     tokenizer_2=AutoTokenizer.from_pretrained(tmp_path / "tokenizer_2"),
                     transformer=transformer).save_pretrained(tmp_path)
    return tmp_path


# The fault battery (tests/test_battery_*.py): one row per case of a bad input or a fault, run through the CLI.

class Case:
    """One battery row: `argv` for `poegen` ("{tmp}" stands for the case's folder), the exit code it must give,
    a piece of text the output must hold (stderr for errors, else stdout and stderr), files to write under the
    folder first (name -> str or bytes), environment variables to set, and an optional check of the folder
    afterwards, check(folder)."""

    def __init__(self, argv, code, text="", files=None, env=None, check=None):
        self.argv, self.code, self.text = list(argv), code, text
        self.files, self.env, self.check = files or {}, env or {}, check

    def run(self, tmp_path: Path, capsys, monkeypatch):
        """Run the row and assert its outcome; a refusal (exit 2 to 6) must be one `poegen: error:` line."""
        from poegen.cli import main
        for name, data in self.files.items():
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            data = data.replace("{tmp}", str(tmp_path)) if isinstance(data, str) else data
            path.write_bytes(data.encode() if isinstance(data, str) else data)
        for key, value in self.env.items():
            monkeypatch.setenv(key, value)
        argv = [a.replace("{tmp}", str(tmp_path)) for a in self.argv]
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code
        out, err = capsys.readouterr()
        assert code == self.code, f"exit {code}, expected {self.code}; stderr: {err[-2000:]}"
        if 2 <= code <= 6:
            lines = [line for line in err.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("poegen: error: "), err[-2000:]
            assert len(lines[0]) < 600, f"message of {len(lines[0])} characters"
        text = err if 2 <= code <= 6 else out + err
        assert self.text.replace("{tmp}", str(tmp_path)) in text, text[-2000:]
        if self.check is not None:
            self.check(tmp_path)
