import math

import pytest
import torch

from config import COLOURS, KINDS, PATTERNS, Config
from train import ema_decay
from model import CA_NET, CondUpBlock, Stage1_D, Stage1_G, Stage2_D, Stage2_G, build_models
from utils import attribute_loss, discriminator_loss, generator_loss, kl_loss


def tiny(**kw):
    base = dict(gf_dim=4, df_dim=4, r_num=1, z_dim=8, condition_dim=6, text_dim=10)
    base.update(kw)
    return Config(**base)


@pytest.mark.parametrize("s1,s2", [(16, 64), (32, 128), (64, 256), (16, 32)])
def test_shapes_both_stages(s1, s2):
    cfg = tiny(stage1_size=s1, stage2_size=s2)
    g1, d1 = build_models(cfg)
    text, z = torch.randn(3, cfg.text_dim), torch.randn(3, cfg.z_dim)
    img, mu, logvar = g1(text, z)
    assert img.shape == (3, 3, s1, s1)
    assert mu.shape == logvar.shape == (3, cfg.condition_dim)
    assert img.min() >= -1 and img.max() <= 1
    cond, uncond, aux = d1(img, text)  # D reads the sentence embedding itself
    assert cond.shape == (3,) and uncond is None
    assert [a.shape for a in aux] == [(3, len(KINDS)), (3, len(COLOURS)), (3, len(PATTERNS))]

    cfg.stage = 2
    g2, d2 = build_models(cfg, g1)
    hi, mu2, _, low = g2(text, z, return_stage1=True)
    assert hi.shape == (3, 3, s2, s2) and low.shape == (3, 3, s1, s1)
    cond, uncond, _ = d2(hi, text)
    assert cond.shape == uncond.shape == (3,)


def test_stage2_keeps_stage1_frozen():
    cfg = tiny(stage1_size=16, stage2_size=64)
    g1 = Stage1_G(cfg)
    before = {k: v.clone() for k, v in g1.state_dict().items()}
    g2 = Stage2_G(cfg, g1).train()
    assert not g2.stage1.training  # BatchNorm statistics of the frozen stage stay put
    opt = torch.optim.Adam([p for p in g2.parameters() if p.requires_grad], lr=1e-2)
    img, mu, logvar = g2(torch.randn(4, cfg.text_dim), torch.randn(4, cfg.z_dim))
    img.mean().backward()
    opt.step()
    for k, v in g1.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(not p.requires_grad for p in g2.stage1.parameters())


def test_sizes_must_be_powers_of_two():
    with pytest.raises(ValueError, match="power of two"):
        Stage1_G(tiny(stage1_size=48))
    with pytest.raises(ValueError, match="larger"):
        Stage2_G(tiny(stage1_size=64, stage2_size=16), Stage1_G(tiny(stage1_size=64)))


def test_ca_net_matches_hand_computation():
    ca = CA_NET(text_dim=2, c_dim=1)
    with torch.no_grad():
        ca.fc.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.5]]))
        ca.fc.bias.copy_(torch.tensor([0.1, -1.0]))
    t = torch.tensor([[1.0, 1.0]])
    eps = torch.tensor([[2.0]])
    c, mu, logvar = ca(t, eps=eps)
    # mu = 1 - 2 + 0.1 = -0.9 (negative: no ReLU forcing mu >= 0); logvar = 0.5 + 0.5 - 1 = 0
    assert mu.item() == pytest.approx(-0.9)
    assert logvar.item() == pytest.approx(0.0)
    assert c.item() == pytest.approx(-0.9 + math.exp(0.0) * 2.0)
    # sigma below one is reachable too
    with torch.no_grad():
        ca.fc.bias.copy_(torch.tensor([0.1, -3.0]))
    c, mu, logvar = ca(t, eps=eps)
    assert math.exp(0.5 * logvar.item()) < 1
    assert c.item() == pytest.approx(-0.9 + math.exp(-1.0) * 2.0)


def test_kl_against_hand_values():
    assert kl_loss(torch.zeros(3, 4), torch.zeros(3, 4)).item() == pytest.approx(0.0)
    mu = torch.tensor([[1.0, -2.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)]])
    # per dim: 0.5*(sigma^2 + mu^2 - 1 - log sigma^2) -> 0.5*(1+1-1-0)=0.5 ; 0.5*(4+4-1-log4)
    expect = (0.5 + 0.5 * (4 + 4 - 1 - math.log(4.0))) / 2
    assert kl_loss(mu, logvar).item() == pytest.approx(expect, rel=1e-6)


class FixedD(torch.nn.Module):
    """Returns preset logits per call, to check the loss arithmetic."""

    def __init__(self, outs):
        super().__init__()
        self.outs = list(outs)

    def forward(self, img, c):
        return (*self.outs.pop(0), None)


def bce(logit, target):
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_discriminator_and_generator_losses():
    x = torch.zeros(1, 3, 4, 4)
    c = torch.zeros(1, 2)
    t = lambda v: torch.tensor([v])
    # Stage I (no unconditional head): real 2.0, wrong 0.5, fake -1.0
    loss, stats = discriminator_loss(FixedD([(t(2.0), None), (t(0.5), None), (t(-1.0), None)]),
                                     x, x, x, c)
    expect = bce(2.0, 1) + 0.5 * (bce(0.5, 0) + bce(-1.0, 0))
    assert loss.item() == pytest.approx(expect, rel=1e-6)
    assert float(stats["d_wrong"]) == pytest.approx(bce(0.5, 0), rel=1e-6)
    # Stage II adds the unconditional terms to real and fake
    loss, _ = discriminator_loss(FixedD([(t(2.0), t(1.0)), (t(0.5), t(9.0)), (t(-1.0), t(0.3))]),
                                 x, x, x, c)
    expect = bce(2.0, 1) + bce(1.0, 1) + 0.5 * (bce(0.5, 0) + bce(-1.0, 0) + bce(0.3, 0))
    assert loss.item() == pytest.approx(expect, rel=1e-6)
    mu, logvar = torch.tensor([[1.0]]), torch.tensor([[0.0]])
    loss, stats = generator_loss(FixedD([(t(-1.0), t(0.5))]), x, c, mu, logvar, kl_coef=2.0)
    assert loss.item() == pytest.approx(bce(-1.0, 1) + bce(0.5, 1) + 2.0 * 0.5, rel=1e-6)
    assert float(stats["kl"]) == pytest.approx(0.5)


def test_discriminator_loss_trains_d_only():
    cfg = tiny(stage1_size=16)
    g, d = build_models(cfg)
    real = torch.rand(4, 3, 16, 16) * 2 - 1
    text = torch.randn(4, cfg.text_dim)
    fake, mu, logvar = g(text, torch.randn(4, cfg.z_dim))
    loss, _ = discriminator_loss(d, real, real.flip(0), fake, text)
    loss.backward()
    assert all(p.grad is None for p in g.parameters())  # fake and condition are detached
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in d.parameters())


def test_hinge_losses():
    x = torch.zeros(1, 3, 4, 4)
    c = torch.zeros(1, 2)
    t = lambda v: torch.tensor([v])
    d = FixedD([(t(0.5), t(2.0)), (t(-0.5), None), (t(0.25), t(-3.0))])
    loss, _ = discriminator_loss(d, x, x, x, c, loss="hinge")
    # real: relu(1-0.5) + relu(1-2) ; wrong: relu(1-0.5) ; fake: relu(1+0.25) + relu(1-3)
    assert loss.item() == pytest.approx(0.5 + 0.0 + 0.5 * (0.5 + 1.25 + 0.0))
    mu, logvar = torch.zeros(1, 1), torch.zeros(1, 1)
    loss, _ = generator_loss(FixedD([(t(0.7), t(-0.2))]), x, c, mu, logvar, 2.0, loss="hinge")
    assert loss.item() == pytest.approx(-0.7 + 0.2)


class LinearD(torch.nn.Module):
    """D(x, c) = <w, x>: its input gradient is w, so R1 = |w|^2."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(w)

    def forward(self, img, c):
        return (img * self.w).flatten(1).sum(1), None, None


def test_r1_penalty_matches_hand_value():
    w = torch.randn(1, 3, 4, 4)
    real = torch.randn(5, 3, 4, 4)
    loss0, _ = discriminator_loss(LinearD(w), real, real, real, torch.zeros(5, 2))
    loss, stats = discriminator_loss(LinearD(w), real, real, real, torch.zeros(5, 2), r1_gamma=10.0)
    assert float(stats["r1"]) == pytest.approx(w.pow(2).sum().item(), rel=1e-5)
    assert loss.item() == pytest.approx(loss0.item() + 5.0 * w.pow(2).sum().item(), rel=1e-5)
    loss.backward()  # the penalty is differentiable in D's weights


def test_diff_augment():
    from utils import UserError, diff_augment
    torch.manual_seed(0)
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    x.requires_grad_(True)
    for policy in ("color", "translation", "cutout", "color,translation,cutout"):
        y = diff_augment(x, policy)
        assert y.shape == x.shape and not torch.equal(y, x)
        y.sum().backward()  # gradients reach the generator through the augmentation
        assert x.grad is not None and x.grad.abs().sum() > 0
        x.grad = None
    assert diff_augment(x, "") is x
    # cutout blanks a quarter of the image (a half-size square, clipped at the border)
    y = diff_augment(torch.ones(64, 3, 16, 16), "cutout")
    zero = (y[:, 0] == 0).float().mean((1, 2))
    assert (zero <= 0.25 + 1e-6).all() and zero.mean() > 0.1
    # translation moves content by at most 1/8 of the size, filling with zeros
    img = torch.zeros(64, 1, 16, 16)
    img[:, :, 8, 8] = 1
    y = diff_augment(img, "translation")
    pos = y.flatten(1).argmax(1)
    assert ((pos // 16 - 8).abs() <= 2).all() and ((pos % 16 - 8).abs() <= 2).all()
    assert (y.sum((1, 2, 3)) == 1).all()
    with pytest.raises(UserError):
        diff_augment(x, "rotate")


def test_spectral_norm_discriminator():
    cfg = tiny(stage1_size=16, d_norm="sn")
    d = Stage1_D(cfg)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    assert any(torch.nn.utils.parametrize.is_parametrized(m) for m in d.modules())
    from model import weights_init
    d.apply(weights_init)
    cond, _, _ = d(torch.randn(2, 3, 16, 16), torch.randn(2, cfg.text_dim))
    assert cond.shape == (2,) and torch.isfinite(cond).all()


def _bn_inputs(netG, emb, z):
    """Per BatchNorm layer of netG (training mode), the mean and variance over the batch
    (and positions) of what goes into it, from one forward pass."""
    seen = {}
    hooks = [m.register_forward_hook(lambda m, x, y, name=name: seen.__setitem__(name, x[0].detach()))
             for name, m in netG.named_modules()
             if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
    with torch.no_grad():
        netG(emb, z)
    for h in hooks:
        h.remove()
    dims = {2: [0], 4: [0, 2, 3]}
    return {k: (v.mean(dims[v.dim()]), v.var(dims[v.dim()])) for k, v in seen.items()}


def test_standing_stats_fit_the_weights_and_keep_the_rng():
    from utils import accumulate, standing_stats
    cfg = tiny(stage1_size=16)
    torch.manual_seed(0)
    live, _ = build_models(cfg)
    ema, _ = build_models(cfg)
    accumulate(ema, live, 0.0)  # ema <- live, then the weights drift away from live's
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(1.5)
    ema.eval()
    emb = torch.randn(50, cfg.text_dim)
    rng = torch.get_rng_state()
    standing_stats(ema, emb, n_batches=40, batch_size=32, seed=3)
    first_stats = {k: v.clone() for k, v in ema.state_dict().items()}
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random stream is untouched
    assert not ema.training
    assert all(m.momentum == 0.1 for m in ema.modules() if isinstance(m, torch.nn.BatchNorm2d))

    # the statistics match what the layers see in training mode on a fresh large batch
    ema.train()
    ref = _bn_inputs(ema, emb[torch.randint(50, (2000,))], torch.randn(2000, cfg.z_dim))
    ema.eval()
    names = dict(ema.named_modules())
    for name, (mean, var) in ref.items():
        bn = names[name]
        assert torch.allclose(bn.running_mean, mean, atol=0.05 * (1 + mean.abs().max())), name
        assert torch.allclose(bn.running_var, var, rtol=0.15, atol=1e-3), name
    # the live generator's copied statistics did not fit the drifted weights
    first = next(n for n in ref if n.startswith("fc"))
    live_bn = dict(live.named_modules())[first]
    assert not torch.allclose(live_bn.running_var, ref[first][1], rtol=0.15)

    # the same seed gives the same statistics, whatever the buffers held before
    standing_stats(ema, emb, n_batches=40, batch_size=32, seed=3)
    assert all(torch.equal(v, ema.state_dict()[k]) for k, v in first_stats.items())


def test_standing_stats_leave_the_frozen_stage1_alone():
    from utils import standing_stats
    cfg = tiny(stage1_size=16, stage2_size=32)
    g1, _ = build_models(cfg)
    cfg.stage = 2
    g2, _ = build_models(cfg, g1)
    before = {k: v.clone() for k, v in g2.stage1.state_dict().items()}
    rest = {k: v.clone() for k, v in g2.state_dict().items() if not k.startswith("stage1.")}
    standing_stats(g2.eval(), torch.randn(20, cfg.text_dim), n_batches=3, batch_size=8)
    assert all(torch.equal(v, g2.stage1.state_dict()[k]) for k, v in before.items())
    changed = [k for k, v in rest.items() if "running_mean" in k and not torch.equal(v, g2.state_dict()[k])]
    assert changed  # Stage II's own statistics were recomputed


def test_text_conditioning_switches():
    """g_fusion affine: the text reaches every up block (the output changes with the text
    even when the 4x4 input is fixed); d_cond mu: D reads a condition-sized vector."""
    cfg = tiny(stage1_size=16)
    g = Stage1_G(cfg).eval()
    assert all(isinstance(b, CondUpBlock) for b in g.ups)
    h = torch.randn(2, g.ngf, 4, 4)
    c1, c2 = torch.randn(2, cfg.condition_dim), torch.randn(2, cfg.condition_dim)
    from model import run_ups
    with torch.no_grad():
        for b in g.ups:  # make the text's effect visible at init
            b.affine.weight.normal_(0, 1)
        assert not torch.allclose(run_ups(g.ups, h, c1), run_ups(g.ups, h, c2))
    plain = Stage1_G(tiny(stage1_size=16, g_fusion="input"))
    assert not any(isinstance(b, CondUpBlock) for b in plain.ups)
    d = Stage1_D(tiny(stage1_size=16, d_cond="mu", aux_coef=0.0))
    assert d.text_proj is None and d.aux is None
    cond, _, aux = d(torch.randn(2, 3, 16, 16), torch.randn(2, cfg.condition_dim))
    assert cond.shape == (2,) and aux is None
    with pytest.raises(ValueError, match="g_fusion"):
        Stage1_G(tiny(g_fusion="both"))


def test_attribute_loss_and_its_terms():
    """Cross-entropy per attribute, an unknown (-100) label ignored; D's term uses the
    real images' heads and G's the generated images'."""
    logits = (torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[5.0, 0.0]]))
    labels = torch.tensor([[0, 1, -100]])
    expect = (math.log(1 + math.exp(-2.0)) + (math.log(2 + math.e) - 1.0))
    assert attribute_loss(logits, labels).item() == pytest.approx(expect, rel=1e-6)
    x, c = torch.zeros(1, 3, 4, 4), torch.zeros(1, 2)

    class AuxD(torch.nn.Module):
        def __init__(self, outs):
            super().__init__()
            self.outs = list(outs)

        def forward(self, img, cond):
            return self.outs.pop(0)

    t = torch.tensor
    real = (t([2.0]), None, logits)
    d = AuxD([real, (t([0.5]), None, None), (t([-1.0]), None, None)])
    with_aux, stats = discriminator_loss(d, x, x, x, c, labels=labels, aux_coef=2.0)
    d = AuxD([real, (t([0.5]), None, None), (t([-1.0]), None, None)])
    without, _ = discriminator_loss(d, x, x, x, c)
    assert with_aux.item() == pytest.approx(without.item() + 2.0 * expect, rel=1e-5)
    assert float(stats["d_aux"]) == pytest.approx(expect, rel=1e-5)
    mu = logvar = torch.zeros(1, 2)
    g_with, g_stats = generator_loss(AuxD([(t([0.3]), None, logits)]), x, c, mu, logvar, 2.0,
                                     labels=labels, aux_coef=0.5)
    g_without, _ = generator_loss(AuxD([(t([0.3]), None, logits)]), x, c, mu, logvar, 2.0)
    assert g_with.item() == pytest.approx(g_without.item() + 0.5 * expect, rel=1e-5)
    assert float(g_stats["g_aux"]) == pytest.approx(expect, rel=1e-5)


def test_ema_decay_warms_up():
    assert ema_decay(0.999, 0) == pytest.approx(0.1)
    assert ema_decay(0.999, 90) == pytest.approx(91 / 100)
    assert ema_decay(0.999, 100_000) == 0.999
    # after a short run the initial weights keep a negligible share
    share = 1.0
    for step in range(2000):
        share *= ema_decay(0.999, step)
    assert share < 1e-3 < 0.999 ** 2000
