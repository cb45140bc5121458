"""The shapes world's video prior (``experts/shapes/video.py``): the image prior's frames plus a learned space-time
correction, trained on simulated clips (``scripts/train_shapes_video.py``) and used as the clip product's base."""
import math

import numpy as np
import pytest
import torch

from helpers import load_script

from poegen.experts.shapes.tracked import TrackedExpert
from poegen.experts.shapes.model import load_prior
from poegen.experts.shapes.video import TemporalNet, load_video_prior, save_video_prior
from poegen.families import shapes_video_product
from poegen.specs import for_shapes, from_prompt

ROLL = "a red ball rolls off a blue box"


def _nan(frames):
    return torch.full((frames, 2), math.nan)


def _randomised(net: TemporalNet, seed: int = 0) -> TemporalNet:
    """The net with its zero-initialised last layer drawn at random (a correction that is not zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        net.out.weight.copy_(torch.randn(net.out.weight.shape, generator=g) * 0.05)
    return net


def _x0(product, x, sigma):
    """The product's denoised estimate."""
    return product.evaluate(x, sigma, product.total_weight(x.shape[1:], x.device, x.dtype)).x0


@pytest.fixture(scope="module")
def prior():
    return load_prior()


def test_untrained_correction_is_the_image_prior_frame_by_frame(prior):
    """The last convolution starts at zero: the video expert's x0 equals the unconditional frames' exactly, and
    so the clip product's denoiser with the video prior equals the one without it (video^1 null^-1 cancels)."""
    x, sigma = torch.randn(2, 3, 5, 32, 32, generator=torch.Generator().manual_seed(1)) * 2, torch.tensor(1.5)
    video = TrackedExpert(prior.net, None, _nan(5), temporal=TemporalNet(), dtype="float32")
    null = TrackedExpert(prior.net, None, _nan(5), dtype="float32")
    got_video, got_null = TrackedExpert.denoise_batch([video, null], x, sigma)
    torch.testing.assert_close(got_video, got_null, atol=0, rtol=0)

    layout = for_shapes(from_prompt(ROLL), video=True)  # the motion prompt read as its scene
    with_video = shapes_video_product(layout, frames=5, dtype="float32", potential_weight=0.0, video_prior=True)
    untrained = shapes_video_product(layout, frames=5, dtype="float32", potential_weight=0.0, temporal=TemporalNet(),
                                     video_prior=True)
    started = shapes_video_product(layout, frames=5, dtype="float32", potential_weight=0.0)  # auto
    from_noise = shapes_video_product(layout, frames=5, dtype="float32", potential_weight=0.0, start=0)
    assert "shapes-video[null]" not in started.names and started.start is not None  # independent frames
    assert from_noise.names[-1] == "shapes-video[null]" and from_noise.start is None
    plain = shapes_video_product(layout, frames=5, dtype="float32", potential_weight=0.0, video_prior=False)
    assert [e.name for e in with_video.experts][-1] == "shapes-video[null]"
    assert sum(with_video.weights) == pytest.approx(1.0) and sum(plain.weights) == pytest.approx(1.0)
    assert with_video.weights[0] == pytest.approx(plain.weights[0] - 1.0)
    torch.testing.assert_close(_x0(untrained, x, sigma), _x0(plain, x, sigma), atol=1e-5, rtol=1e-5)
    assert (_x0(with_video, x, sigma) - _x0(plain, x, sigma)).abs().max() > 1e-3  # the trained one acts
    # regional windows per frame
    regional = shapes_video_product(layout, frames=5, dtype="float32", potential_weight=0.0, region=5.0,
                                    video_prior=True)
    assert len(regional.masks) == len(regional.experts) and regional.masks[-1].eq(1).all()
    torch.testing.assert_close(regional.total_weight(x.shape[1:], x.device, x.dtype), torch.ones(1, *x.shape[1:]))


def test_correction_couples_frames_and_takes_any_length(prior):
    """Changing frame 0 of the noisy clip moves the video expert's frame 2 (frames are no longer independent) and
    not the image prior's; the same net takes 5 and 9 frames."""
    net = _randomised(TemporalNet()).eval()
    video = TrackedExpert(prior.net, None, _nan(5), temporal=net, dtype="float32")
    null = TrackedExpert(prior.net, None, _nan(5), dtype="float32")
    x = torch.randn(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(2))
    y = x.clone()
    y[:, :, 0] += 1.0
    sigma = torch.tensor(1.0)
    (a_video, a_null), (b_video, b_null) = (TrackedExpert.denoise_batch([video, null], z, sigma) for z in (x, y))
    assert (a_video[:, :, 2] - b_video[:, :, 2]).abs().max() > 1e-4
    torch.testing.assert_close(a_null[:, :, 2], b_null[:, :, 2], atol=1e-6, rtol=0)
    nine = TrackedExpert(prior.net, None, _nan(9), temporal=net, dtype="float32")
    assert nine.denoise(torch.zeros(2, 3, 9, 32, 32), sigma).shape == (2, 3, 9, 32, 32)


def test_experts_of_one_phrase_and_track_share_a_forward(prior):
    """The video expert and the null expert ask the prior the same thing: one forward of 2 experts' frames, not 3."""
    rows = []
    hook = prior.net.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    try:
        experts = [TrackedExpert(prior.net, None, _nan(5), temporal=TemporalNet()),
                   TrackedExpert(prior.net, None, _nan(5)),
                   TrackedExpert(prior.net, "red ball", torch.tensor([[8.0, 20.0]] * 5))]
        assert len({e.batch_key for e in experts}) == 1
        TrackedExpert.denoise_batch(experts, torch.zeros(3, 3, 5, 32, 32), torch.tensor(1.0))
    finally:
        hook.remove()
    assert rows == [2 * 3 * 5]


def test_weights_round_trip_and_a_missing_file_names_where_and_how(tmp_path):
    with torch.random.fork_rng():
        torch.manual_seed(3)
        net = _randomised(TemporalNet(), seed=3).eval()
    save_video_prior(net, tmp_path, extra={"trained_iters": 7})
    back = load_video_prior(tmp_path)
    assert back.config["trained_iters"] == 7
    x, x0, sigma = torch.randn(2, 3, 5, 32, 32), torch.rand(2, 3, 5, 32, 32) * 2 - 1, torch.tensor([0.5, 3.0])
    want = net.correct(x, x0, sigma)
    assert (want - x0).abs().max() > 0.05  # a correction that is not zero, stored in fp16
    torch.testing.assert_close(back.correct(x, x0, sigma), want, atol=5e-3, rtol=5e-3)
    with pytest.raises(FileNotFoundError, match=r"video\.safetensors.*train_shapes_video\.py"):
        load_video_prior(tmp_path / "nowhere")


def test_training_lowers_the_loss_below_the_frames_alone(prior):
    """The training script's loss on a fixed noisy batch of simulated clips (sigma 3): Adam steps take the video
    prior's EDM loss well below the image prior's frames alone, from equal at the zero start."""
    mod = load_script("train_shapes_video")
    rng = np.random.default_rng(0)
    clips = torch.from_numpy(np.stack([mod.simulated_clip(rng, 5) for _ in range(4)])).float() / 127.5 - 1

    class Args:
        p_mean, p_std = 1.1, 0.0

    torch.manual_seed(0)
    net = TemporalNet()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss, frames_loss = mod.losses(net, prior, clips, torch.Generator().manual_seed(0), Args)
        losses.append((loss.item(), frames_loss.item()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[0][0] == pytest.approx(losses[0][1])
    assert losses[-1][0] < 0.8 * losses[-1][1], losses[-1]


def test_shipped_video_prior_beats_independent_frames_on_new_clips(prior):
    """On simulated clips it never saw (another seed), the shipped correction lowers EDM's loss against the image
    prior's frames alone at every tested noise level."""
    mod = load_script("train_shapes_video")
    net = load_video_prior()
    rng = np.random.default_rng(12345)
    clips = torch.from_numpy(np.stack([mod.simulated_clip(rng, 5) for _ in range(24)])).float() / 127.5 - 1
    for sigma in (0.3, 1.0, 3.0):
        class Args:
            p_mean, p_std = math.log(sigma), 0.0

        with torch.no_grad():
            loss, frames_loss = mod.losses(net, prior, clips, torch.Generator().manual_seed(0), Args)
        assert loss < frames_loss, (sigma, loss.item(), frames_loss.item())


def test_clip_frames_are_scored_by_the_frames_scorer():
    """A clip's per-frame questions read the frames scorer (weights/vlm_frames.*), not the image scorer."""
    from poegen.experts.shapes.scorer import FRAMES, load_vlm
    from poegen.families import shapes_product

    layout = for_shapes(from_prompt(ROLL), video=True)
    clip = shapes_video_product(layout, dtype="float32")
    image = shapes_product(for_shapes(from_prompt("a red ball"), video=False))
    frames_net, image_net = clip.potentials[-1].potential.net, image.potentials[0].net
    reference = load_vlm(stem=FRAMES).net.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in frames_net.state_dict().items())
    assert not all(torch.equal(v, image_net.state_dict()[k]) for k, v in frames_net.state_dict().items())
