import math

import pytest
import torch

from captions import COLOURS, KINDS, PATTERNS
from config import Config, UserError
from train import ema_decay
from model import (CA_NET, CondUpBlock, Stage1_D, Stage1_G, Stage2_G, build_models, run_ups,
                   weights_init)
from utils import accumulate, standing_stats


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


def test_stage1_channel_floor_widens_only_the_blocks_below_it():
    """g_min_channels: Stage I's up blocks halve from gf_dim*8 (32 here: 16, 8, 4, 2 by
    halving) but keep at least this many; a checkpoint's config without the field (older
    runs) builds StackGAN's floor of 8, so its weights still fit."""
    outs = lambda g: [b.conv[1].out_channels for b in g.ups]
    assert outs(Stage1_G(tiny(stage1_size=64))) == [16, 8, 8, 8]
    g = Stage1_G(tiny(stage1_size=64, g_min_channels=12))
    assert outs(g) == [16, 12, 12, 12] and g.to_img[0].in_channels == 12
    img, _, _ = g(torch.randn(2, 10), torch.randn(2, 8))
    assert img.shape == (2, 3, 64, 64)
    old = {k: v for k, v in tiny().to_dict().items() if k != "g_min_channels"}
    assert Config.from_dict(old).g_min_channels == 8


def test_supersampled_stage1_draws_larger_and_averages_down():
    """g_supersample 2: one more up block, the picture drawn at twice stage1_size, and the
    output is the mean of each 2x2 square of that picture; the StackGAN default (1) and a
    checkpoint's config without the field draw at stage1_size."""
    torch.manual_seed(0)
    plain, ss = Stage1_G(tiny(stage1_size=32)), Stage1_G(tiny(stage1_size=32, g_supersample=2))
    assert len(ss.ups) == len(plain.ups) + 1
    drawn = {}
    ss.to_img.register_forward_hook(lambda m, i, o: drawn.setdefault("big", o))
    img, _, _ = ss.eval()(torch.randn(2, 10), torch.randn(2, 8))
    big = drawn["big"]
    assert big.shape == (2, 3, 64, 64) and img.shape == (2, 3, 32, 32)
    corner = big[:, :, :2, :2].mean((2, 3))
    assert torch.allclose(img[:, :, 0, 0], corner, atol=1e-6)
    assert not torch.allclose(img, big[:, :, ::2, ::2], atol=1e-3)  # not a subsampling
    old = {k: v for k, v in tiny().to_dict().items() if k != "g_supersample"}
    assert Config.from_dict(old).g_supersample == 1
    with pytest.raises(UserError, match="g_supersample"):
        tiny(g_supersample=3).validate()


def upsample_modes(module) -> set:
    return {m.mode for m in module.modules() if isinstance(m, torch.nn.Upsample)}


def test_bilinear_upsampling_reaches_every_g_block_with_the_same_weights():
    """g_upsample bilinear: every up block of both stages interpolates instead of copying
    pixels (StackGAN's nearest, the default and what a checkpoint without the field
    builds), with the very same weights, and draws a smoother picture from them; a Stage
    II keeps its Stage I's own upsampling; a resume with the other value is refused."""
    from utils import check_arch
    torch.manual_seed(0)
    near, bil = Stage1_G(tiny(stage1_size=32)), Stage1_G(tiny(stage1_size=32, g_upsample="bilinear"))
    bil.load_state_dict(near.state_dict())  # no weight is added or removed
    assert upsample_modes(near.ups) == {"nearest"} and upsample_modes(bil.ups) == {"bilinear"}
    text, z = torch.randn(8, 10), torch.randn(8, 8)
    a, b = near.eval()(text, z)[0], bil.eval()(text, z)[0]
    jump = lambda img: (img[..., 1:] - img[..., :-1]).abs().mean()  # neighbouring pixels
    assert jump(b) < 0.8 * jump(a)
    s2 = Stage2_G(tiny(stage=2, stage1_size=32, stage2_size=128, g_upsample="bilinear"), near)
    assert upsample_modes(s2.ups) == {"bilinear"} and upsample_modes(s2.stage1) == {"nearest"}
    old = {k: v for k, v in tiny().to_dict().items() if k != "g_upsample"}
    assert Config.from_dict(old).g_upsample == "nearest"
    with pytest.raises(UserError, match="g_upsample"):
        tiny(g_upsample="bicubic").validate()
    with pytest.raises(UserError, match="g_upsample='nearest'"):
        check_arch(tiny().to_dict(), tiny(g_upsample="bilinear"), "last.pt")


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


def test_spectral_norm_discriminator():
    cfg = tiny(stage1_size=16, d_norm="sn")
    d = Stage1_D(cfg)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    assert any(torch.nn.utils.parametrize.is_parametrized(m) for m in d.modules())
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
    """g_fusion affine_text / affine: the text reaches every up block (the output changes
    with the text even when the 4x4 input is fixed); affine_text feeds those blocks the
    sentence embedding itself (next test);
    d_cond mu: D reads a condition-sized vector."""
    for fusion in ("affine_text", "affine_text_z", "affine"):
        cfg = tiny(stage1_size=16, g_fusion=fusion)
        width = {"affine_text": cfg.text_dim, "affine_text_z": cfg.text_dim + cfg.z_dim,
                 "affine": cfg.condition_dim}[fusion]
        g = Stage1_G(cfg).eval()
        assert all(isinstance(b, CondUpBlock) for b in g.ups)
        assert all(b.affine.in_features == width for b in g.ups)
        h = torch.randn(2, g.ngf, 4, 4)
        c1, c2 = torch.randn(2, width), torch.randn(2, width)
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


def test_affine_text_blocks_read_the_sentence_not_the_ca_sample():
    """With g_fusion affine_text the up blocks get the sentence embedding (affine_text_z:
    and z): with the 4x4 path cut (fc weights 0), two CA noise draws give the same picture
    unless the blocks read the CA sample ("affine"), and two z give the same picture
    unless the blocks read z."""
    same_eps, same_z = {}, {}
    for fusion in ("affine_text", "affine_text_z", "affine"):
        torch.manual_seed(0)
        g = Stage1_G(tiny(stage1_size=16, g_fusion=fusion)).eval()
        with torch.no_grad():
            g.fc[0].weight.zero_()
            for b in g.ups:
                b.affine.weight.normal_(0, 1)
            text, z = torch.randn(2, g.ca_net.fc.in_features), torch.randn(2, g.z_dim)
            torch.manual_seed(1)
            a = g(text, z)[0]
            torch.manual_seed(2)
            b_ = g(text, z)[0]
            torch.manual_seed(1)
            other_z = g(text, torch.randn(2, g.z_dim))[0]
        same_eps[fusion] = torch.allclose(a, b_)
        same_z[fusion] = torch.allclose(a, other_z)
    assert same_eps == {"affine_text": True, "affine_text_z": True, "affine": False}
    assert same_z == {"affine_text": True, "affine_text_z": False, "affine": False}


def test_ema_decay_warms_up():
    assert ema_decay(0.999, 0) == pytest.approx(0.1)
    assert ema_decay(0.999, 90) == pytest.approx(91 / 100)
    assert ema_decay(0.999, 100_000) == 0.999
    # after a short run the initial weights keep a negligible share
    share = 1.0
    for step in range(2000):
        share *= ema_decay(0.999, step)
    assert share < 1e-3 < 0.999 ** 2000
