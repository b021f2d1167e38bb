"""InfoNCE and GLoRIA losses (chapters 20, 21): cross-checks beyond the notebooks' inline tests."""
import pytest
import torch

from elvis_nb.losses.gloria import (gloria_global_loss, gloria_local_loss, gloria_local_loss_loop, gloria_local_similarity,
                                    gloria_local_similarity_autograd, gloria_local_similarity_loop)
from elvis_nb.losses.infonce import infonce


def batch(B=5, T=9, R=7, D=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, T + 1, (B,), generator=g)
    words = torch.randn(B, T, D, generator=g, dtype=dtype).requires_grad_()
    regions = torch.randn(B, R, D, generator=g, dtype=dtype).requires_grad_()
    return words, torch.arange(T)[None] < lens[:, None], regions


@pytest.mark.parametrize('chunk_size', [1, 2, 5, 100])
@pytest.mark.parametrize('gammas', [(4.0, 5.0, 10.0), (1.0, 0.5, 3.0), (20.0, 10.0, 1.0)])
def test_blocked_local_loss_equals_official_loop(chunk_size, gammas):
    words, mask, regions = batch(seed=chunk_size)
    g1, g2, g3 = gammas
    ref = gloria_local_loss_loop(words, mask, regions, g1, g2, g3)
    ours = gloria_local_loss(words, mask, regions, g1, g2, g3, chunk_size=chunk_size)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(torch.autograd.grad(ours, (words, regions)), torch.autograd.grad(ref, (words, regions))):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_similarity_under_no_grad_and_more_images_than_captions():
    words, mask, regions = batch(B=3)
    more = torch.cat([regions, regions.flip(0)])
    with torch.no_grad():
        torch.testing.assert_close(gloria_local_similarity(words, mask, more, chunk_size=2),
                                   gloria_local_similarity_loop(words, mask, more))


@pytest.mark.parametrize('captions_per_block', [1, 3, 100])
def test_plain_autograd_similarity_equals_official_loop(captions_per_block):
    words, mask, regions = batch(seed=7)
    ref = gloria_local_similarity_loop(words, mask, regions)
    ours = gloria_local_similarity_autograd(words, mask, regions, captions_per_block=captions_per_block)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    weights = torch.randn_like(ref)   # a non-uniform upstream gradient
    for a, b in zip(torch.autograd.grad((ours * weights).sum(), (words, regions)),
                    torch.autograd.grad((ref * weights).sum(), (words, regions))):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_infonce_limit_of_gloria_global():
    words, mask, regions = batch()
    img, txt = regions.mean(1), words.mean(1)
    torch.testing.assert_close(infonce(img, txt, tau=0.1, lambda_i2t=0.5), gloria_global_loss(img, txt, 10.0) / 2)