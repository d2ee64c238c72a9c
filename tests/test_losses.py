"""The losses of utils.py: StackGAN's matching-aware D and G terms, the hinge variant,
KL, R1, the attribute term, and the differentiable augmentation D's inputs go through."""
import math

import pytest
import torch

from config import Config
from model import build_models
from utils import (UserError, attribute_loss, diff_augment, discriminator_loss, generator_loss,
                   kl_loss, mode_seeking_loss)


def tiny(**kw):
    base = dict(gf_dim=4, df_dim=4, r_num=1, z_dim=8, condition_dim=6, text_dim=10)
    base.update(kw)
    return Config(**base)


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


def test_mode_seeking_loss_against_hand_values():
    z = torch.zeros(4, 3)
    z[2:] = 2.0  # noise gap |z_i - z_{i+2}| = 2 everywhere
    fake = torch.zeros(4, 3, 2, 2)
    fake[2:] = 0.5  # image gap 0.5
    assert mode_seeking_loss(fake, z).item() == pytest.approx(1 / (0.5 / 2 + 1e-5), rel=1e-6)
    # identical images of one caption: the loss is at its largest, 1 / eps
    assert mode_seeking_loss(torch.ones(4, 3, 2, 2), z).item() == pytest.approx(1e5, rel=1e-6)
    # an odd batch: the last row has no partner and does not count
    odd = torch.cat([fake, torch.full((1, 3, 2, 2), 9.0)])
    assert mode_seeking_loss(odd, torch.cat([z, z[:1]])).item() == pytest.approx(
        1 / (0.5 / 2 + 1e-5), rel=1e-6)
    # images compared average-pooled to 16 px: a checkerboard of +-0.5 between two 32 px
    # images is speckle, not variety (loss 1 / eps); a shade difference of 0.5 counts whole
    speckle = torch.zeros(4, 3, 32, 32)
    speckle[2:, :, ::2, ::2], speckle[2:, :, 1::2, 1::2] = 1.0, 1.0
    speckle[2:] -= 0.5
    assert speckle[2:].abs().mean() == 0.5
    assert mode_seeking_loss(speckle, z).item() == pytest.approx(1e5, rel=1e-6)
    shade = torch.zeros(4, 3, 32, 32)
    shade[2:] = 0.5
    assert mode_seeking_loss(shade, z).item() == pytest.approx(1 / (0.5 / 2 + 1e-5), rel=1e-6)


def test_mode_seeking_step_draws_a_captions_images_apart():
    """A few SGD steps on the mode-seeking loss alone move a tiny G's two images of the
    same caption away from each other."""
    torch.manual_seed(0)
    cfg = tiny(stage1_size=16)
    g, _ = build_models(cfg)
    text = torch.randn(4, cfg.text_dim).repeat(2, 1)  # rows i and i + 4 share a caption
    z = torch.randn(8, cfg.z_dim)
    opt = torch.optim.SGD(g.parameters(), lr=0.05)

    def gap():
        with torch.no_grad():
            fake = g(text, z)[0]
        return (fake[:4] - fake[4:]).abs().mean().item()

    before = gap()
    for _ in range(5):
        opt.zero_grad()
        mode_seeking_loss(g(text, z)[0], z).backward()
        opt.step()
    assert gap() > 1.5 * before


class RecordingD(torch.nn.Module):
    """A discriminator that notes the text condition of every call."""

    def __init__(self, d):
        super().__init__()
        self.d, self.conds = d, []

    def forward(self, img, c):
        self.conds.append(c.detach().clone())
        return self.d(img, c)


@pytest.mark.parametrize("d_cond", ["text", "mu"])
def test_train_step_pairs_captions_for_mode_seeking(d_cond):
    """With ms_coef > 0, G draws the first half's captions twice (rows i and i + 2 of a
    batch of 5 share one), D scores those fakes with their own captions' condition and
    the real and wrong images with the batch's; with ms_coef 0 every caption is drawn once."""
    import train
    torch.manual_seed(0)
    for ms in (1.0, 0.0):
        cfg = tiny(stage1_size=16, d_cond=d_cond, ms_coef=ms, ema_decay=0.0)
        g, d = build_models(cfg)
        rec = RecordingD(d)
        opt_g, opt_d = train.adam(g.parameters(), 1e-4, cfg), train.adam(d.parameters(), 1e-4, cfg)
        nets = train.wrap(g, rec, None, opt_g, opt_d, False, 1, torch.device("cpu"))
        emb = torch.randn(5, cfg.text_dim)
        real = torch.rand(5, 3, 16, 16) * 2 - 1
        labels = torch.tensor([[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 0], [4, 0, 1]])
        text_c = emb if d_cond == "text" else train.ca_mean(g, emb)  # before G's update
        stats = train.train_step(nets, (real, real.flip(0), emb, labels), cfg, 0, False)
        real_c, wrong_c, fake_c, g_c = rec.conds  # D's real, wrong and fake calls, then G's
        order = [0, 1, 0, 1, 2] if ms else [0, 1, 2, 3, 4]
        torch.testing.assert_close(real_c, text_c, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(wrong_c, text_c, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fake_c, text_c[order], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g_c, fake_c)
        assert ("ms" in stats) == (ms > 0)
        if ms:
            assert float(stats["g_loss"]) > float(stats["ms"]) > 0


def test_lazy_regularisation_applies_r1_every_nth_step_at_n_times_the_weight():
    """With reg_every 4, train_step adds the R1 penalty on steps 0 and 4 only, weighted
    4 * r1_gamma / 2, and the log averages it over those steps, not over all eight."""
    import train
    torch.manual_seed(0)
    cfg = tiny(stage1_size=16, r1_gamma=0.5, reg_every=4, ema_decay=0.0)
    g, d = build_models(cfg)
    opt_g, opt_d = train.adam(g.parameters(), 1e-4, cfg), train.adam(d.parameters(), 1e-4, cfg)
    nets = train.wrap(g, d, None, opt_g, opt_d, False, 1, torch.device("cpu"))
    emb = torch.randn(5, cfg.text_dim)
    real = torch.rand(5, 3, 16, 16) * 2 - 1
    labels = torch.tensor([[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 0], [4, 0, 1]])
    meter, r1s = train.StepStats(), []
    for step in range(8):
        stats = train.train_step(nets, (real, real.flip(0), emb, labels), cfg, step, False)
        meter.add(stats)
        assert ("r1" in stats) == (step % 4 == 0)
        unregularised = (stats["d_real"] + 0.5 * (stats["d_wrong"] + stats["d_fake"])
                         + cfg.aux_coef * stats.get("d_aux", 0.0))
        penalty = 0.5 * 4 * cfg.r1_gamma * stats["r1"] if "r1" in stats else 0.0
        assert float(stats["d_loss"]) == pytest.approx(float(unregularised + penalty), rel=1e-4)
        if "r1" in stats:
            assert float(stats["r1"]) > 0
            r1s.append(float(stats["r1"]))
    logged = meter.read(8)
    assert logged["r1"] == pytest.approx(sum(r1s) / 2, rel=1e-5)
