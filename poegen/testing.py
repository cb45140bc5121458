"""Tiny models built from configs, saved to a folder and loaded back the way a user's checkpoint is:
used by the tests and the benchmarks; nothing is downloaded."""
from pathlib import Path

import torch


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
