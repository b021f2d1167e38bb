"""ELVIS's ablation options (#13): each limit case against a reference, the validation errors, one smoke step per value."""
import pytest
import torch

from elvis_nb.core import seed_everything
from elvis_nb.data.synth import SynthPretrain
from elvis_nb.data.transforms import collate
from elvis_nb.losses.elvis import ElvisLocalConfig, elvis_local_loss, onehot_targets, spatial_targets
from elvis_nb.models.methods import ELVIS, ElvisConfig, Method, build_method

F64 = torch.float64


@pytest.fixture(scope='module')
def batch():
    b = collate([SynthPretrain('train', 'smoke', seed=0)[i] for i in range(4)])
    return b['image'], b['text']


def step(m, images, texts, lr=1e-2):
    "One training step of `m`; returns its LossOutput."
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=lr)
    out = m(images, m.tokenize(texts))
    out.loss.backward(); opt.step()
    return out


def loss_inputs(seed, B=3, N_I=6, N_T=5, D=4, Dy=7):
    g = torch.Generator().manual_seed(seed)
    mk = lambda n, d: torch.randn(B, n, d, generator=g, dtype=F64)
    mask = torch.arange(N_T) < torch.tensor([[5], [2], [1]])
    return (mk(N_I, Dy), mk(N_I, D), mk(N_I, D), mk(N_T, Dy), mk(N_T, D), mk(N_T, D), mask)


@pytest.mark.parametrize('grid', [(1, 1), (2, 3), (5, 4)])
def test_spatial_radius_zero_is_onehot(grid):
    n = grid[0] * grid[1]
    assert torch.equal(spatial_targets(grid, 0.), onehot_targets(1, n)[0])
    x = loss_inputs(0, N_I=n)
    spatial = elvis_local_loss(*x, ElvisLocalConfig(target='spatial', spatial_radius=0.), image_grid=grid)
    onehot = elvis_local_loss(*x, ElvisLocalConfig(target='onehot'))
    assert spatial.loss.item() == onehot.loss.item()


def test_spatial_target_is_lovts():
    "LoVT's weights, written the way its code builds them: relative distances, threshold, exp(-λ d), row-normalised."
    h, w, r, lam = 4, 6, 2.5, 1.
    coords = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')).float().view(2, -1).T
    coords = coords / (h ** 2 + w ** 2) ** .5                                 # LoVT: 'relative', by the diagonal
    d = torch.cdist(coords.double(), coords.double())
    ref = (d <= r / (h ** 2 + w ** 2) ** .5) * torch.exp(-lam * d)
    ref = ref / ref.sum(-1, keepdim=True)
    torch.testing.assert_close(spatial_targets((h, w), r, lam), ref.float(), rtol=0, atol=1e-6)
    x = loss_inputs(1, N_I=h * w)
    out = elvis_local_loss(*x, ElvisLocalConfig(target='spatial', spatial_radius=r), image_grid=(h, w))
    onehot = elvis_local_loss(*x, ElvisLocalConfig(target='onehot'))
    assert out.components['local_text'].item() == onehot.components['local_text'].item()   # text: one-hot (LoVT's)
    assert out.diagnostics['target_diag_mass_image'] < 0.5


def test_uniform_weights_give_todays_loss():
    x = loss_inputs(2)
    cfg = ElvisLocalConfig(weight_image=0.6, weight_text=0.9)
    today = elvis_local_loss(*x, cfg)
    uniform = elvis_local_loss(*x, ElvisLocalConfig(weight_image=0.6, weight_text=0.9, element_weights='uniform'))
    assert uniform.loss.item() == today.loss.item()
    const = elvis_local_loss(*x, cfg, image_weights=torch.full((3, 6), .4, dtype=F64), text_weights=torch.full((3, 5), 7., dtype=F64))
    torch.testing.assert_close(const.loss, today.loss, rtol=0, atol=1e-12)


@pytest.mark.parametrize('options, message', [
    (dict(target='smooth'), "ElvisConfig.target must be one of ('intra_modal', 'onehot', 'spatial'), got 'smooth'"),
    (dict(target_source='teacher'), "ElvisConfig.target_source must be one of ('live', 'init', 'ema'), got 'teacher'"),
    (dict(element_weights='max'), "ElvisConfig.element_weights must be one of ('uniform', 'attention'), got 'max'"),
    (dict(tau_tgt=0.), "ElvisConfig.tau_tgt must be positive, got 0.0"),
    (dict(tau_src=-1.), "ElvisConfig.tau_src must be positive, got -1.0"),
    (dict(target_momentum=1.01), "ElvisConfig.target_momentum must be in [0, 1], got 1.01"),
    (dict(target_momentum=-0.5), "ElvisConfig.target_momentum must be in [0, 1], got -0.5"),
    (dict(spatial_radius=-0.1), "ElvisConfig.spatial_radius must be ≥ 0, got -0.1"),
    (dict(attention='bert'), "ElvisConfig.attention must be one of ('lovt', 'gloria'), got 'bert'"),
    (dict(attention_norm='layer'), "ElvisConfig.attention_norm must be 'batch' or None, got 'layer'"),
    (dict(text_level='paragraphs'), "ElvisConfig.text_level must be one of ('tokens', 'words', 'sentences'), got 'paragraphs'"),
    (dict(element_weights='attention', text_pooling='mean'), "it needs text_pooling='attention', got 'mean'"),
])
def test_bad_options_fail_when_the_config_is_built(options, message):
    with pytest.raises(ValueError) as e: ElvisConfig(**options)
    assert message in str(e.value)
    with pytest.raises(ValueError) as e: build_method('elvis', 'smoke', **options)
    assert message in str(e.value)


def test_ema_momentum_zero_is_the_live_target(batch):
    images, texts = batch
    seed_everything(0)
    ema = build_method('elvis', 'smoke', target_source='ema', target_momentum=0.)
    step(ema, images, texts)                                             # the live weights move away from the copy
    live = build_method('elvis', 'smoke')
    _, unexpected = live.load_state_dict(ema.state_dict(), strict=False)
    assert unexpected and all(k.startswith('target_encoders.') for k in unexpected)
    tokens = ema.tokenize(texts)
    torch.manual_seed(1); a = ema(images, tokens)                        # dropout on: the copy draws the live masks
    torch.manual_seed(1); b = live(images, tokens)
    assert a.loss.item() == b.loss.item() and a.diagnostics == b.diagnostics


def test_ema_momentum_one_and_init_keep_the_initial_target(batch):
    images, texts = batch
    seed_everything(0); base = build_method('elvis', 'smoke')            # the untrained model
    models = {}
    for source, m in (('init', 0.99), ('ema', 1.)):
        seed_everything(0); models[source] = build_method('elvis', 'smoke', target_source=source, target_momentum=m)
        tokens = models[source].tokenize(texts)
        torch.manual_seed(1); first = models[source](images, tokens)
        torch.manual_seed(1); assert first.loss.item() == base(images, tokens).loss.item()   # step 0: the same model
        for _ in range(2): step(models[source], images, texts)
    tokens = base.tokenize(texts)
    torch.manual_seed(2); ref_i = base.image_encoder(images).local_feats; ref_t = base.text_encoder(**tokens).local_feats
    for source, m in models.items():
        torch.manual_seed(2); y_i, y_t = m.target_features(images, tokens)
        assert torch.equal(y_i, ref_i) and torch.equal(y_t, ref_t), source
        assert not torch.equal(m.image_encoder(images).local_feats, ref_i)             # while the live encoder moved


def test_ema_moves_between_and_only_in_training(batch, tmp_path):
    images, texts = batch
    seed_everything(0)
    m = build_method('elvis', 'smoke', target_source='ema', target_momentum=0.5)
    assert not any(p.requires_grad for p in m.target_encoders.parameters())
    w = lambda mod: mod.image_encoder.backbone.embedder.embedder.convolution.weight if hasattr(mod, 'image_encoder') else \
        mod['image'].backbone.embedder.embedder.convolution.weight
    step(m, images, texts)
    before, live = w(m.target_encoders).clone(), w(m).detach().clone()
    m(images, m.tokenize(texts))                                        # θ' ← ½θ' + ½θ
    torch.testing.assert_close(w(m.target_encoders), 0.5 * before + 0.5 * live, rtol=0, atol=1e-7)
    after = w(m.target_encoders).clone()
    with torch.no_grad(): m.eval()(images, m.tokenize(texts))
    assert torch.equal(w(m.target_encoders), after)                     # eval mode: the copy stays
    m.save_pretrained(tmp_path / 'ema')                                 # the copy is saved with the model (resume)
    m2 = Method.from_pretrained(tmp_path / 'ema')
    assert m2.config.target_source == 'ema' and torch.equal(w(m2.target_encoders), after)
    for k, v in m.state_dict().items(): assert torch.equal(v, m2.state_dict()[k]), k


SMOKE_OPTIONS = [dict(target='intra_modal'), dict(target='onehot'), dict(target='spatial'),
                 dict(target_source='init'), dict(target_source='ema'), dict(element_weights='attention'),
                 dict(attention='gloria'), dict(text_level='sentences'), dict(tau_tgt=1.0, tau_src=0.03),
                 dict(weight_image=0.0, weight_text=2.0),
                 dict(text_level='sentences', element_weights='attention', target='spatial', target_source='ema')]


@pytest.mark.parametrize('options', SMOKE_OPTIONS, ids=lambda o: ','.join(f'{k}={v}' for k, v in o.items()))
def test_every_option_value_trains_a_smoke_step(batch, options):
    images, texts = batch
    seed_everything(0)
    m = build_method('elvis', 'smoke', **options)
    out = step(m, images, texts)
    assert torch.isfinite(out.loss), options
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    if options.get('target') == 'spatial':
        assert out.diagnostics['target_diag_mass_text'] == 1.0 and out.diagnostics['target_diag_mass_image'] < 1.0


def test_ema_copy_resumes_from_a_training_checkpoint(batch, tmp_path):
    "Two steps, a checkpoint, two more steps = four steps in one go: the EMA copy is part of what a resume restores."
    from elvis_nb.checkpoint import load_checkpoint, save_checkpoint
    images, texts = batch
    def run(m, opt, n):
        for k in range(n):
            torch.manual_seed(10 + k); out = m(images, m.tokenize(texts))
            opt.zero_grad(); out.loss.backward(); opt.step()
    def fresh():
        seed_everything(0)
        m = build_method('elvis', 'smoke', target_source='ema', target_momentum=0.5)
        return m, torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    (a, opt_a), (b, opt_b) = fresh(), fresh()
    run(a, opt_a, 4)
    run(b, opt_b, 2)
    save_checkpoint(tmp_path / 'last.safetensors', b, opt_b, step=2)
    c, opt_c = fresh()
    load_checkpoint(tmp_path / 'last.safetensors', c, opt_c, restore_rng=False)
    for k in range(2, 4):
        torch.manual_seed(10 + k); out = c(images, c.tokenize(texts))
        opt_c.zero_grad(); out.loss.backward(); opt_c.step()
    sa, sc = a.state_dict(), c.state_dict()
    assert any(k.startswith('target_encoders.') for k in sa)
    for k in sa: torch.testing.assert_close(sc[k], sa[k], rtol=0, atol=0, msg=k)
