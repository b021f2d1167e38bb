"""ELVIS's local losses, intra-modal targets and cross-attention against naive float64 loops (values and gradients)."""
import math

import pytest
import torch
import torch.nn.functional as F

from elvis_nb.losses.cross_attention import CrossAttention
from elvis_nb.losses.elvis import ElvisLocalConfig, elvis_local_loss, local_contrastive_loss, onehot_targets
from elvis_nb.losses.targets import intra_modal_targets, target_diagonal_mass, target_entropy

F64 = torch.float64


def cos(a, b):
    return (a @ b) / (a.norm() * b.norm()).clamp_min(1e-6 ** 2)


def naive_modality_loss(y, z, za, lengths, tau_src, tau_tgt, both, onehot):
    "L^M_l one sample, one element and one scalar cosine at a time, valid elements only."
    per_sample = []
    for b, n in enumerate(lengths):
        rows = []
        for i in range(n):
            if onehot: q = F.one_hot(torch.tensor(i), n).to(F64)
            else: q = torch.softmax(torch.stack([cos(y[b, i], y[b, j]) for j in range(n)]).detach() / tau_tgt, 0)
            row = -(q * torch.log_softmax(torch.stack([cos(z[b, i], za[b, j]) for j in range(n)]) / tau_src, 0)).sum()
            if both:
                rev = -(q * torch.log_softmax(torch.stack([cos(za[b, i], z[b, j]) for j in range(n)]) / tau_src, 0)).sum()
                row = (row + rev) / 2
            rows.append(row)
        per_sample.append(torch.stack(rows).mean())
    return torch.stack(per_sample).mean()


def batch(seed, B=4, N_I=9, N_T=7, D=5, Dy=6, lengths=(7, 4, 1, 2)):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=F64).requires_grad_()
    img = [mk(B, N_I, Dy), mk(B, N_I, D), mk(B, N_I, D)]
    txt = [mk(B, N_T, Dy), mk(B, N_T, D), mk(B, N_T, D)]
    mask = torch.arange(N_T) < torch.tensor(lengths)[:, None]
    return img, txt, mask, list(lengths)


@pytest.mark.parametrize('target', ['intra_modal', 'onehot'])
@pytest.mark.parametrize('both', [True, False])
def test_elvis_local_loss_matches_loop(target, both):
    img, txt, mask, lengths = batch(0)
    cfg = ElvisLocalConfig(target=target, both_directions=both, weight_image=0.7, weight_text=0.4, tau_tgt=0.2)
    out = elvis_local_loss(*img, *txt, mask, cfg)
    n_img = [img[1].shape[1]] * img[1].shape[0]
    l_img = naive_modality_loss(*img, n_img, 0.3, 0.2, both, target == 'onehot')
    l_txt = naive_modality_loss(*txt, lengths, 0.3, 0.2, both, target == 'onehot')
    torch.testing.assert_close(out.components['local_image'], l_img, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.components['local_text'], l_txt, rtol=0, atol=1e-12)
    ref = 0.7 * l_img + 0.4 * l_txt
    leaves = [img[1], img[2], txt[1], txt[2]]
    for gf, gr in zip(torch.autograd.grad(out.loss, leaves), torch.autograd.grad(ref, leaves)):
        torch.testing.assert_close(gf, gr, rtol=0, atol=1e-12)
    # stop-gradient: the encoder features reach the loss only through the (detached) target
    assert torch.autograd.grad(out.loss, [img[0], txt[0]], allow_unused=True) == (None, None)


def test_onehot_limit_of_intra_modal_target():
    img, txt, mask, _ = batch(1)
    y, z, za = txt
    q = intra_modal_targets(y, mask, tau_tgt=1e-4)
    torch.testing.assert_close(q, onehot_targets(*mask.shape, mask).to(F64), rtol=0, atol=1e-12)
    elvis = local_contrastive_loss(z, za, q, mask)
    intra = elvis_local_loss(*img, *txt, mask, ElvisLocalConfig(target='onehot')).components['local_text']
    torch.testing.assert_close(elvis, intra, rtol=0, atol=1e-12)


def test_targets_and_diagnostics():
    _, (y, _, _), mask, lengths = batch(2)
    q = intra_modal_targets(y, mask)
    for b, n in enumerate(lengths):
        s = torch.stack([torch.stack([cos(y[b, i], y[b, j]) for j in range(n)]) for i in range(n)]).detach()
        torch.testing.assert_close(q[b, :n, :n], torch.softmax(s / 0.1, -1), rtol=0, atol=1e-12)
        assert (q[b, n:] == 0).all() and (q[b, :, n:] == 0).all()
    ent = [[-(q[b, i, :n] * q[b, i, :n].log()).sum() for i in range(n)] for b, n in enumerate(lengths)]
    torch.testing.assert_close(target_entropy(q, mask), torch.stack([torch.stack(e).mean() for e in ent]).mean())
    diag = torch.stack([q[b, :n, :n].diagonal().mean() for b, n in enumerate(lengths)]).mean()
    torch.testing.assert_close(target_diagonal_mass(q, mask), diag)


def naive_cross_attention(ca, z_img, z_txt, lengths):
    Wk, Wv, Wo = ca.key, ca.value, ca.output
    img_rows, txt_rows = [], []
    for b, n in enumerate(lengths):
        words, regions = z_txt[b, :n], z_img[b]
        for r in regions:
            a = torch.softmax(torch.stack([Wk(r) @ Wk(w) for w in words]) / math.sqrt(ca.dim), 0)
            img_rows.append(Wo(sum(ai * Wv(w) for ai, w in zip(a, words))))
        for w in words:
            a = torch.softmax(torch.stack([Wk(w) @ Wk(r) for r in regions]) / math.sqrt(ca.dim), 0)
            txt_rows.append(Wo(sum(ai * Wv(r) for ai, r in zip(a, regions))))
    bn = lambda x: (x - x.mean(0)) / (x.var(0, unbiased=False) + ca.norm.eps).sqrt() * ca.norm.weight + ca.norm.bias
    return bn(torch.stack(img_rows)), bn(torch.stack(txt_rows))


def test_cross_attention_matches_loop():
    torch.manual_seed(3)
    img, txt, mask, lengths = batch(3)
    ca = CrossAttention(5).double()
    with torch.no_grad(): ca.norm.weight.uniform_(.5, 1.5); ca.norm.bias.uniform_(-.5, .5)
    fi, ft, attn = ca(img[1], txt[1], mask)
    ri, rt = naive_cross_attention(ca, img[1], txt[1], lengths)
    torch.testing.assert_close(fi.flatten(0, 1), ri, rtol=0, atol=1e-10)
    torch.testing.assert_close(ft[mask], rt, rtol=0, atol=1e-10)
    assert (ft[~mask] == 0).all() and (attn['img2txt'][~mask[:, None, :].expand_as(attn['img2txt'])] == 0).all()
    w = torch.randn(2, 5, dtype=F64)
    params = [img[1], txt[1], *ca.parameters()]
    gf = torch.autograd.grad((fi.flatten(0, 1) @ w[0]).tanh().sum() + (ft[mask] @ w[1]).tanh().sum(), params)
    gr = torch.autograd.grad((ri @ w[0]).tanh().sum() + (rt @ w[1]).tanh().sum(), params)
    for a, b in zip(gf, gr): torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def full_step(ca, y_img, z_img, y_txt, z_txt, mask):
    img_att, txt_att, _ = ca(z_img, z_txt, mask)
    return elvis_local_loss(y_img, z_img, img_att, y_txt, z_txt, txt_att, mask)


@pytest.mark.parametrize('case', ['identical', 'zeros'])
def test_degenerate_inputs_are_finite(case):
    B, N_I, N_T, D = 2, 16, 5, 8
    make = torch.ones if case == 'identical' else torch.zeros
    z_img, z_txt = make(B, N_I, D, requires_grad=True), make(B, N_T, D, requires_grad=True)
    mask = torch.tensor([[True] + [False] * (N_T - 1)] * B)                    # one-word reports
    out = full_step(CrossAttention(D), z_img, z_img, z_txt, z_txt, mask)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(z_img.grad).all() and torch.isfinite(z_txt.grad).all()
    assert all(torch.isfinite(v) for v in out.diagnostics.values())


def test_bf16_autocast_close_to_fp32():
    torch.manual_seed(4)
    B, N_I, N_T, D = 4, 49, 20, 64
    y_img, y_txt = torch.randn(B, N_I, 128).relu(), torch.randn(B, N_T, 128)
    z_img, z_txt = torch.randn(B, N_I, D), torch.randn(B, N_T, D)
    mask = torch.arange(N_T) < torch.tensor([20, 13, 5, 1])[:, None]
    ca = CrossAttention(D)
    ref = full_step(ca, y_img, z_img, y_txt, z_txt, mask)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        low = full_step(ca, y_img, z_img, y_txt, z_txt, mask)
    assert torch.isfinite(low.loss)
    torch.testing.assert_close(low.loss.float(), ref.loss, rtol=0.02, atol=0.02)


def test_paper_shape_runs():
    "The paper's element counts and width (19×19 regions, ≤ 97 words, D = 512; B cut from 48 to 8 for CPU time)."
    torch.manual_seed(5)
    B, N_I, N_T, D = 8, 361, 97, 512
    z_img, z_txt = torch.randn(B, N_I, D, requires_grad=True), torch.randn(B, N_T, D, requires_grad=True)
    mask = torch.arange(N_T) < torch.randint(10, N_T + 1, (B, 1))
    out = full_step(CrossAttention(D), torch.randn(B, N_I, 64).relu(), z_img, torch.randn(B, N_T, 64), z_txt, mask)
    out.loss.backward()
    assert torch.isfinite(out.loss) and z_img.grad.shape == z_img.shape and torch.isfinite(z_txt.grad).all()


def test_attention_pool_bf16_score_fp32_features():
    "The crash of the paper profile: under bf16 autocast the pooling score is bf16 while the features are fp32."
    from elvis_nb.models.encoders import AttentionPool
    torch.manual_seed(6)
    pool, x = AttentionPool(16), torch.randn(3, 7, 16)
    mask = torch.arange(7) < torch.tensor([[7], [2], [1]])
    ref = pool(x, mask)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        low = pool(x, mask)
    assert torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), ref, rtol=0.05, atol=0.05)
    torch.testing.assert_close(ref[2], x[2, 0], rtol=1e-5, atol=1e-5)      # one valid element: pooled = that element
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert torch.isfinite(pool(x.half(), mask)).all()                  # fp16 features too
