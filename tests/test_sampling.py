"""Sampling filters, the exponential-race sampler and the delay pattern."""

from __future__ import annotations

import torch

from musicgen.sampling import SamplingParams, delay, delay_columns, sample, top_p_filter, undelay


def test_top_p_keeps_the_smallest_nucleus() -> None:
    probs = torch.tensor([[0.1, 0.4, 0.2, 0.3]])
    assert torch.equal(top_p_filter(probs, 0.5), torch.tensor([[0.0, 0.4, 0.0, 0.3]]))  # 0.4 < 0.5: add 0.3
    assert torch.equal(top_p_filter(probs, 0.3), torch.tensor([[0.0, 0.4, 0.0, 0.0]]))  # the top one always


def test_exponential_race_matches_the_distribution() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(200_000, 4)
    g = torch.Generator().manual_seed(0)
    draws = sample(logits, SamplingParams(top_k=0), g)
    freq = torch.bincount(draws, minlength=4).float() / draws.numel()
    torch.testing.assert_close(freq, probs, atol=5e-3, rtol=0)


def test_top_k_draws_from_the_renormalised_top_k() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(200_000, 4)
    draws = sample(logits, SamplingParams(top_k=2), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / draws.numel()
    torch.testing.assert_close(freq, torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=5e-3, rtol=0)
    hot = sample(logits, SamplingParams(top_k=2, temperature=0.5), torch.Generator().manual_seed(0))
    freq = torch.bincount(hot, minlength=4).float() / hot.numel()  # p^2 renormalised: 25 / 34, 9 / 34
    torch.testing.assert_close(freq, torch.tensor([25 / 34, 9 / 34, 0.0, 0.0]), atol=5e-3, rtol=0)
    every = sample(logits, SamplingParams(top_k=10), torch.Generator().manual_seed(0))  # k >= V: all of them
    torch.testing.assert_close(torch.bincount(every, minlength=4).float() / every.numel(), probs, atol=5e-3, rtol=0)


def test_top_k_sampling_never_leaves_the_top_k() -> None:
    logits = torch.randn(5000, 64, generator=torch.Generator().manual_seed(1))
    draws = sample(logits, SamplingParams(top_k=3), torch.Generator().manual_seed(2))
    top3 = logits.topk(3).indices
    assert (top3 == draws[:, None]).any(-1).all()


def test_greedy_is_argmax() -> None:
    logits = torch.randn(7, 4, 2048)
    assert torch.equal(sample(logits, SamplingParams(temperature=0), None), logits.argmax(-1))


def test_delay_and_undelay_are_inverse() -> None:
    codes = torch.randint(0, 2048, (2, 8, 6))
    for delays in ((0, 1, 2, 3), (0, 0, 1, 1, 2, 2, 3, 3)):
        c = codes[:, : len(delays)]
        seq = delay(c, delays, 2048)
        assert seq.shape == (2, len(delays), 1 + 6 + 3)
        assert torch.equal(undelay(seq, delays, 6), c)
        d = torch.tensor(delays)[None, :]
        for col in range(seq.shape[-1]):  # real tokens sit exactly where delay_columns says
            assert torch.equal(seq[:, :, col] != 2048, delay_columns(d, 6, col).expand(2, -1))
