import math

import pytest
import torch

from poegen import resampling

SCHEMES = sorted(resampling.RESAMPLERS)


def test_registry_has_the_four_schemes():
    assert set(SCHEMES) >= {"systematic", "stratified", "multinomial", "residual"}


@pytest.mark.parametrize("name", SCHEMES)
def test_expected_counts_are_unbiased(name):
    w = torch.tensor([0.05, 0.4, 0.15, 0.3, 0.1])
    N, reps = len(w), 4000
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(N)
    for _ in range(reps):
        counts += torch.bincount(resampling.get(name)(w.log(), g, N), minlength=N)
    mean = counts / reps
    se = (N * w * (1 - w) / reps).sqrt()  # multinomial variance bounds the others
    assert ((mean - N * w).abs() <= 4 * se).all(), (name, mean, N * w)


@pytest.mark.parametrize("name", SCHEMES)
def test_zero_weight_is_never_picked(name):
    log_w = torch.tensor([0.0, -math.inf, 1.0, -math.inf, 0.5, -math.inf])
    g = torch.Generator().manual_seed(2)
    for _ in range(500):
        idx = resampling.get(name)(log_w, g, 6)
        assert torch.isfinite(log_w[idx]).all()


@pytest.mark.parametrize("name", SCHEMES)
def test_all_but_one_dead_picks_the_survivor(name):
    log_w = torch.full((100,), -math.inf)
    log_w[37] = -1234.5
    idx = resampling.get(name)(log_w, torch.Generator().manual_seed(3), 100)
    assert (idx == 37).all()


@pytest.mark.parametrize("name", SCHEMES)
def test_float32_cumsum_short_of_one(name):
    # float32 weights whose running sum stops short of 1, with a zero weight last: never past the end, never the zero
    w = torch.cat([torch.full((41,), 1 / 41, dtype=torch.float32), torch.zeros(1)])
    assert torch.cumsum(w, 0)[-1] < 1
    g = torch.Generator().manual_seed(4)
    hits_last = 0
    for _ in range(300):
        idx = resampling.get(name)(w.log(), g, 42)
        assert idx.max() <= 40 and idx.min() >= 0
        hits_last += int((idx == 40).sum())
    assert hits_last > 0  # the last live particle is still reachable


def test_huge_log_weights_do_not_overflow():
    log_w = torch.tensor([1000.0, 1000.0 + math.log(3.0)], dtype=torch.float32)
    counts = torch.bincount(resampling.systematic(log_w, torch.Generator().manual_seed(0), 4000), minlength=2)
    assert counts.tolist() == [1000, 3000]


def test_ess_closed_forms():
    assert resampling.ess(torch.zeros(10)) == pytest.approx(10)
    assert resampling.ess(torch.tensor([0.0, -math.inf, -math.inf])) == pytest.approx(1)
    w = torch.tensor([0.5, 0.25, 0.25])
    assert resampling.ess(w.log()) == pytest.approx(1 / (w ** 2).sum())
    assert resampling.ess(torch.full((4,), -math.inf)) == 0


def test_unknown_scheme_lists_known_names():
    with pytest.raises(ValueError, match="systematic"):
        resampling.get("bogus")
