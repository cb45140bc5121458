"""A memory cap keeps a run under it by micro-batching (resident memory on a CPU) and gives the same samples."""
import pytest
import torch

import poegen
from poegen import memory
from poegen.experts.diffusers import VPUNetExpert


@pytest.fixture(scope="module")
def expert(tmp_path_factory):
    from diffusers import DDPMScheduler, UNet2DModel

    root = tmp_path_factory.mktemp("vp32")
    torch.manual_seed(0)
    UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                norm_num_groups=8).save_pretrained(root / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(root / "scheduler")
    return VPUNetExpert.from_pretrained(str(root))


def test_a_memory_cap_is_kept_by_micro_batches_with_the_same_samples(expert):
    N = 160
    product = poegen.Product([expert])

    def run():
        return poegen.sample(product, sampler="smc", num_particles=N, num_steps=3, generator=torch.Generator().manual_seed(0))

    run()  # warm up: lazily created buffers are not part of either measurement
    out = {}
    base = memory.current("cpu")
    plain = memory.measure(lambda: out.setdefault("plain", run()), "cpu")
    assert plain > 60e6  # the uncapped level's activations are large enough to measure
    cap = base + plain / 2
    chosen = memory.fit(product, cap / memory.GB, N, "cpu")
    assert 1 <= chosen[expert.name] < N and expert.micro_batch == chosen[expert.name]
    start = memory.current("cpu")
    capped = memory.measure(lambda: out.setdefault("capped", run()), "cpu")
    # the capped run's own growth stays within the cap's allowance over the base (what ``fit`` itself left
    # allocated between base and start, a few MB after a long test session, is not the run's)
    assert base + plain > cap >= base + capped and start - base < plain / 8, (base, plain, cap, start, capped)
    a, b = out["capped"].x, out["plain"].x  # the same samples, up to float rounding of other batch sizes
    assert float((a - b).norm() / b.norm()) < 1e-4


def test_a_cap_below_the_models_is_refused(expert):
    with pytest.raises(ValueError, match=r"--max-memory 0.01 GB: the models use .* GB and 8 particles"):
        memory.fit(poegen.Product([expert]), 0.01, 8, "cpu")


def test_offload_hooks_chain_every_large_module_in_a_cycle(tmp_path):
    from poegen.families import named_product as build
    from helpers import tiny_clip_folder, tiny_sd_folder

    product = build("a red ball", [f"sd:{tiny_sd_folder(tmp_path / 'sd')}"],
                    [f"clip:{tiny_clip_folder(tmp_path / 'clip')}"])
    before = poegen.sample(product, num_particles=2, num_steps=2, generator=torch.Generator().manual_seed(0)).x
    hooks = memory.offload(product, "cpu")
    assert len(hooks) == 3  # the UNet, the VAE, CLIP's vision tower
    assert hooks[0].hook.prev_module_hook is hooks[-1] and hooks[1].hook.prev_module_hook is hooks[0]
    after = poegen.sample(product, num_particles=2, num_steps=2, generator=torch.Generator().manual_seed(0)).x
    assert torch.allclose(before, after, atol=1e-5)
