"""The small-data discriminator and Stage II's new parts: DiffAugment with a fixed or
adaptive (ADA) probability, FastGAN's reconstruction loss, DF-GAN's MA-GP, the residual
Stage-II output and its skip-layer excitation, --max_minutes, and Stage II finding its
Stage-I checkpoint."""
import dataclasses

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import main
from config import PHOTOS_PRESET, PHOTOS_STAGE2, Config
from conftest import tiny_args
from model import build_models
from test_resume import assert_same_state
from train import AdaptiveP, super_resolution_step
from utils import diff_augment, discriminator_loss, generator_loss, load_checkpoint


def tiny(**kw):
    base = dict(gf_dim=4, df_dim=4, r_num=1, z_dim=8, condition_dim=6, text_dim=10,
                stage1_size=16, stage2_size=64)
    base.update(kw)
    return Config(**base)


# ------------------------------------------------------------------------- DiffAugment

def test_diffaugment_keeps_a_solid_colour_and_only_moves_or_blanks_pixels():
    """Translation and cutout move the garment or blank part of it (to 0), never change
    its colour: every pixel of an augmented solid red image is red or blank."""
    torch.manual_seed(0)
    red = torch.tensor([0.6, -0.8, -0.7]).view(1, 3, 1, 1).expand(32, 3, 16, 16).contiguous()
    y = diff_augment(red, "translation,cutout")
    blank = (y == 0).all(1)
    assert torch.equal(y.permute(0, 2, 3, 1)[~blank], red.permute(0, 2, 3, 1)[~blank])
    assert blank.any() and (~blank).float().mean() > 0.5
    # the colour op (left out of the presets) does change it
    assert not torch.allclose(diff_augment(red, "color"), red)


class RecordingD(torch.nn.Module):
    """A D that records every image it is shown and scores it 0."""

    def __init__(self):
        super().__init__()
        self.seen, self.w = [], torch.nn.Parameter(torch.zeros(()))

    def forward(self, img, c):
        self.seen.append(img.detach().clone())
        return img.flatten(1).sum(1) * self.w, None, None


@pytest.mark.parametrize("p", [1.0, torch.tensor(1.0)])
def test_real_wrong_and_fake_are_augmented_alike_in_both_steps(p):
    """D's real, wrong and generated inputs, and G's, all go through the same policy:
    given the same images and the same random state, each is changed the same way."""
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    c, mu = torch.zeros(6, 2), torch.zeros(6, 1)
    d = RecordingD()
    torch.manual_seed(3)
    discriminator_loss(d, x, x, x, c, diffaug="translation,cutout", aug_p=p)
    torch.manual_seed(3)
    generator_loss(d, x, c, mu, mu, 1.0, diffaug="translation,cutout", aug_p=p)
    real, wrong, fake, for_g = d.seen
    torch.manual_seed(3)
    expect = diff_augment(x, "translation,cutout", p)
    assert torch.equal(real, expect) and torch.equal(for_g, expect)
    for img in (wrong, fake):  # the next random draws: changed, and changed in the same way
        assert not torch.equal(img, x) and (img == 0).any()


def test_augment_probability():
    x = torch.rand(400, 3, 16, 16) * 2 - 1
    assert torch.equal(diff_augment(x, "cutout", 0.0), x)
    assert torch.equal(diff_augment(x, "cutout", torch.tensor(0.0)), x)
    changed = (diff_augment(x, "cutout", 0.5) != x).flatten(1).any(1).float().mean()
    assert 0.4 < changed < 0.6


def test_ada_moves_p_towards_the_target_and_round_trips():
    ada = AdaptiveP(Config(batch_size=32, ada_target=0.6, ada_kimg=1.0, diffaug="cutout"), "cpu")
    step = 32 * AdaptiveP.interval / 1000
    for _ in range(8):  # D calls every real image real: it is memorising, p rises
        ada.update(torch.tensor(1.0))
    assert float(ada.p) == pytest.approx(2 * step)
    for _ in range(3):
        ada.update(torch.tensor(0.0))  # 3 of an interval of 4: no move yet
    assert float(ada.p) == pytest.approx(2 * step)
    ada.update(torch.tensor(0.0))
    assert float(ada.p) == pytest.approx(step)
    for _ in range(40):
        ada.update(torch.tensor(-1.0))
    assert float(ada.p) == 0.0  # never below 0
    ada.update(torch.tensor(1.0))
    again = AdaptiveP(Config(batch_size=32, ada_target=0.6, ada_kimg=1.0, diffaug="cutout"), "cpu")
    again.load_state_dict(ada.state_dict())
    assert again.state_dict() == ada.state_dict() == {"p": 0.0, "signs": 1.0, "n": 1}
    with pytest.raises(ValueError):
        again.load_state_dict({"p": 2.0, "signs": 0.0, "n": 0})


# ------------------------------------------------------------ reconstruction and MA-GP

def test_reconstruction_loss_falls_on_a_tiny_d():
    """D's decoders learn to rebuild real images from its 8x8 and 16x16 features."""
    torch.manual_seed(0)
    cfg = tiny(stage1_size=32, df_dim=8, recon_coef=1.0)
    _, d = build_models(cfg)
    assert d.dec_whole is not None and d.dec_part is not None and d.rec_size == 16
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    x = F.interpolate(F.avg_pool2d(x, 8), size=32)  # smooth images a decoder can rebuild
    emb = torch.randn(8, cfg.text_dim)
    opt = torch.optim.Adam(d.parameters(), 2e-3)
    losses = []
    for _ in range(60):
        loss = d(x, emb, recon=True)[3]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    # the loss reaches D's encoder, not only the decoders
    d.zero_grad()
    d(x, emb, recon=True)[3].backward()
    assert d.encode[0][0].weight.grad.abs().sum() > 0
    assert tiny(recon_coef=0.0).recon_coef == 0 and build_models(tiny())[1].dec_whole is None


def test_reconstruction_joins_d_loss():
    torch.manual_seed(0)
    cfg = tiny(recon_coef=2.0)
    _, d = build_models(cfg)
    x, emb = torch.rand(4, 3, 16, 16) * 2 - 1, torch.randn(4, cfg.text_dim)
    torch.manual_seed(1)
    plain, _ = discriminator_loss(d, x, x, x, emb)
    torch.manual_seed(1)
    with_rec, stats = discriminator_loss(d, x, x, x, emb, recon_coef=2.0)
    assert with_rec.item() == pytest.approx(plain.item() + 2.0 * float(stats["d_recon"]), rel=1e-5)


class LinearTextD(torch.nn.Module):
    """D(x, c) = <w, x> + <v, c>: its gradient is (w, v), so MA-GP = (|w|^2 + |v|^2)^3."""

    def __init__(self, w, v):
        super().__init__()
        self.w, self.v = torch.nn.Parameter(w), torch.nn.Parameter(v)

    def forward(self, img, c):
        return (img * self.w).flatten(1).sum(1) + (c * self.v).sum(1), None, None


def test_ma_gp_matches_hand_value():
    w, v = torch.randn(1, 3, 4, 4) * 0.3, torch.randn(1, 5) * 0.3
    real, text = torch.randn(6, 3, 4, 4), torch.randn(6, 5)
    base, _ = discriminator_loss(LinearTextD(w, v), real, real, real, text)
    loss, stats = discriminator_loss(LinearTextD(w, v), real, real, real, text, ma_gp=2.0)
    expect = (w.pow(2).sum() + v.pow(2).sum()).item() ** 3
    assert float(stats["ma_gp"]) == pytest.approx(expect, rel=1e-4)
    assert loss.item() == pytest.approx(base.item() + 2.0 * expect, rel=1e-4)
    loss.backward()  # differentiable in D's weights
    assert text.grad is None  # the batch's own tensors are not touched


# ----------------------------------------------------------------------------- Stage II

def test_residual_stage2_starts_at_its_upscaled_draft_and_learns_detail():
    torch.manual_seed(0)
    cfg = tiny(gf_dim=8)
    g1, _ = build_models(cfg)
    g1.eval()
    cfg2 = dataclasses.replace(cfg, stage=2, s2_output="residual", skip_excitation=True)
    g2, _ = build_models(cfg2, g1)
    emb, z = torch.randn(4, cfg.text_dim), torch.randn(4, cfg.z_dim)
    img, _, _, low = g2(emb, z, return_stage1=True)
    draft = F.interpolate(low, size=64, mode="bicubic", align_corners=False).clamp(-0.999, 0.999)
    assert torch.allclose(img, draft, atol=1e-5)
    # 4x4 refined features -> 8, 16, 32, 64 px: the blocks of 16 px and up are gated
    assert sorted(g2.se) == ["1", "2", "3"]
    # a step of G moves it off the draft
    opt = torch.optim.Adam([p for p in g2.parameters() if p.requires_grad], 1e-2)
    (img - 1).abs().mean().backward()
    opt.step()
    assert not torch.allclose(g2(emb, z)[0], draft, atol=1e-3)


def squares(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """n images of a light square on a dark ground, each at its own position and size."""
    g = torch.Generator().manual_seed(seed)
    img = torch.full((n, 3, size, size), -0.6)
    for i in range(n):
        x0, y0 = (int(v) for v in torch.randint(2, size // 2, (2,), generator=g))
        w = int(torch.randint(size // 6, size // 3, (1,), generator=g))
        img[i, :, y0:y0 + w, x0:x0 + w] = 0.6
    return img


def test_draft_skip_lets_stage2_sharpen_edges_where_its_draft_has_them():
    """draft_skip: the draft's full-size features join the up path, so Stage II can put
    the sharp edge back exactly where the blurred draft has it. Trained to super-resolve
    squares at new random places each step (so each loss is on images it has not seen),
    it ends near half the bicubic upscaling's L1; without it (the draft seen only through
    features a quarter of its size) it stays at the bicubic L1. A new Stage II with it
    still returns its draft."""
    first = squares(16, seed=0)
    bicubic = float((F.interpolate(F.interpolate(first, size=16, mode="area"), size=64,
                                   mode="bicubic", align_corners=False) - first).abs().mean())
    final = {}
    for skip in (False, True):
        torch.manual_seed(0)
        cfg = tiny(gf_dim=8)
        g1, _ = build_models(cfg)
        cfg2 = dataclasses.replace(cfg, stage=2, s2_output="residual", skip_excitation=True,
                                   sr_coef=1.0, draft_skip=skip)
        g2, _ = build_models(cfg2, g1)
        assert (g2.draft_skip is not None) == skip
        emb, z = torch.zeros(16, cfg.text_dim), torch.randn(16, cfg.z_dim)
        g2.eval()
        with torch.no_grad():
            img, _, _, low = g2(emb, z, return_stage1=True)
        draft = F.interpolate(low, size=64, mode="bicubic", align_corners=False)
        assert torch.allclose(img, draft.clamp(-0.999, 0.999), atol=1e-5)
        g2.train()
        opt = torch.optim.Adam([p for p in g2.parameters() if p.requires_grad], 3e-3)
        losses = []
        for step in range(150):
            opt.zero_grad(set_to_none=True)
            real = squares(16, seed=step)
            losses.append(float(super_resolution_step(g2, real, emb, z, cfg2, bf16=False)))
            opt.step()
        assert abs(losses[0] - bicubic) < 0.005
        final[skip] = sum(losses[-10:]) / 10
    assert final[False] > 0.85 * bicubic
    assert final[True] < 0.7 * bicubic and final[True] < 0.7 * final[False]


def test_super_resolution_loss_falls_on_a_tiny_stage2():
    """sr_coef: Stage II refines real photos scaled down to stage1_size and learns to put
    back what scaling lost (here stripes 2 px wide, which a 16 px copy averages away; the
    caption says which way they run). It starts at the bicubic upscaling's L1 and falls
    well below it; Stage I takes no part."""
    torch.manual_seed(0)
    cfg = tiny(gf_dim=8)
    g1, _ = build_models(cfg)
    cfg2 = dataclasses.replace(cfg, stage=2, s2_output="residual", skip_excitation=True, sr_coef=1.0)
    g2, _ = build_models(cfg2, g1)
    g2.train()
    stripes = (torch.arange(64) // 2 % 2).float() * 1.2 - 0.6  # +-0.6, 2 px wide
    real = torch.stack([stripes.view(1, 64).expand(64, 64), stripes.view(64, 1).expand(64, 64)])
    real = real[:, None].expand(-1, 3, -1, -1).repeat(4, 1, 1, 1)  # 8: vertical, horizontal, ...
    emb = torch.randn(2, cfg.text_dim).repeat(4, 1)
    z = torch.randn(8, cfg.z_dim)
    stage1 = {k: v.clone() for k, v in g1.state_dict().items()}
    opt = torch.optim.Adam([p for p in g2.parameters() if p.requires_grad], 3e-3)
    losses = []
    for _ in range(80):
        opt.zero_grad(set_to_none=True)
        losses.append(float(super_resolution_step(g2, real, emb, z, cfg2, bf16=False)))
        opt.step()
    small = F.interpolate(real, size=16, mode="area")
    bicubic = (F.interpolate(small, size=64, mode="bicubic", align_corners=False) - real).abs().mean()
    assert abs(losses[0] - float(bicubic)) < 0.02
    assert min(losses[-5:]) < 0.5 * losses[0]
    assert all(torch.equal(v, g1.state_dict()[k]) for k, v in stage1.items())
    assert all(p.grad is None for p in g1.parameters())


def test_stage2_redraw_is_the_original():
    cfg = tiny(stage=2)
    g1, _ = build_models(tiny())
    g2, _ = build_models(cfg, g1)
    keys = g2.state_dict().keys()
    assert not any(k.startswith("se.") for k in keys) and "to_img.0.weight" in keys
    assert not g2.residual_out


# ------------------------------------------------------------------ the training loop

def test_max_minutes_stops_with_a_resumable_checkpoint(dfmm, tmp_path, capsys):
    root, _ = dfmm
    args = ["--train", "y"] + tiny_args(root, tmp_path / "o") + ["--epochs", "100000"]
    assert main.main(args + ["--max_minutes", "0.02"]) == 0
    out = capsys.readouterr().out
    assert "stopped at" in out and "Resume with: python main.py" in out
    stage = tmp_path / "o" / "stage1"
    state = load_checkpoint(stage / "last.pt", resume=True)
    assert state["step"] >= 1 and (stage / "checkpoints" / "interrupted.pt").is_file()
    assert (stage / "samples" / "interrupted.png").is_file() and (stage / "losses.csv").is_file()
    assert state["netG_ema"] is not None
    # the limit belongs to that invocation: a resumed run goes on
    assert main.main(args + ["--resume", "auto", "--max_steps", str(state["step"] + 3)]) == 0
    assert load_checkpoint(stage / "last.pt")["step"] == state["step"] + 3


def test_small_data_switches_resume_exactly(dfmm, tmp_path):
    """ADA's probability, the reconstruction's random quarter and MA-GP: a run stopped
    and resumed ends with the weights of an uninterrupted one."""
    root, _ = dfmm
    extra = ["--diffaug", "translation,cutout", "--ada_target", "0.6", "--ada_kimg", "0.05",
             "--recon_coef", "1", "--ma_gp", "0.5", "--cache_dir", str(tmp_path / "cache")]
    assert main.main(["--train", "y"] + tiny_args(root, tmp_path / "a") + extra) == 0
    full = load_checkpoint(tmp_path / "a" / "stage1" / "last.pt")
    assert full["augment"]["p"] > 0  # D learns the tiny set: p rose
    args = ["--train", "y"] + tiny_args(root, tmp_path / "b") + extra
    assert main.main(args + ["--max_steps", "5"]) == 0
    assert main.main(args + ["--resume", "auto"]) == 0
    resumed = load_checkpoint(tmp_path / "b" / "stage1" / "last.pt")
    assert_same_state(full, resumed)
    assert resumed["augment"] == full["augment"]


def test_stage2_finds_the_stage1_checkpoint_by_itself(dfmm, tmp_path, capsys):
    root, _ = dfmm
    base = tiny_args(root, tmp_path / "o")
    capsys.readouterr()
    assert main.main(["--train", "y", "--stage", "2", "--max_steps", "1"] + base) == 2
    assert "stage1/last.pt does not exist" in capsys.readouterr().err
    # a Stage I whose narrowest blocks are widened: Stage II builds it from its checkpoint
    assert main.main(["--train", "y", "--stage", "1", "--g_min_channels", "12"] + base) == 0
    s1 = load_checkpoint(tmp_path / "o" / "stage1" / "last.pt")
    assert s1["config"]["g_min_channels"] == 12 and s1["netG_ema"]["to_img.0.weight"].shape[1] == 12
    assert main.main(["--train", "y", "--stage", "2", "--max_steps", "2", "--s2_output",
                      "residual", "--skip_excitation", "y", "--sr_coef", "1",
                      "--log_interval", "1"] + base) == 0
    assert "Stage II refines the Stage-I generator" in capsys.readouterr().out
    s2 = load_checkpoint(tmp_path / "o" / "stage2" / "last.pt")
    sr = pd.read_csv(tmp_path / "o" / "stage2" / "losses.csv")["sr"].tolist()
    assert len(sr) == 2 and all(0 < v < 2 for v in sr)  # the photos' L1, logged per step
    assert s2["stage1_config"] == s1["config"]
    for k, v in s1["netG_ema"].items():  # it refines that very generator
        assert torch.equal(s2["netG"][f"stage1.{k}"], v)


def test_photos_preset_has_its_stage2_values():
    def settle(*argv):
        return main.make_config(main.build_parser().parse_args(list(argv)))[0]

    s1 = settle("--train", "y", "--preset", "photos", "--data_dir", "d")
    assert s1 == Config(data_dir="d", **PHOTOS_PRESET)
    s2 = settle("--train", "y", "--stage", "2", "--preset", "photos", "--data_dir", "d")
    assert s2 == Config(data_dir="d", stage=2, **{**PHOTOS_PRESET, **PHOTOS_STAGE2})
    assert s2.s2_output == "residual" and s2.skip_excitation and s2.gf_dim < s1.gf_dim
    assert s2.epochs == 10 < s1.epochs  # Stage II stops before it lays speckle over its drafts
    assert settle("--train", "y", "--stage", "2", "--preset", "photos", "--gf_dim", "8").gf_dim == 8


def test_a_read_only_photo_folder_trains_with_its_caches_elsewhere(dfmm, tmp_path, monkeypatch,
                                                                    capsys):
    """The photo recipe's commands name ../shared/data/clothing-small, a read-only folder:
    its image cache and caption vectors go to the user's cache folder, nothing is written
    into it, and Stage II finds them again."""
    root, _ = dfmm
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    modes = {p: p.stat().st_mode for p in [root, *root.rglob("*")]}
    for p in [root, *root.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        args = ["--data_dir", str(root), "--out_dir", str(tmp_path / "o"), "--wandb", "disabled",
                "--stage1_size", "16", "--stage2_size", "64", "--gf_dim", "4", "--df_dim", "4",
                "--batch_size", "8", "--epochs", "1", "--r_num", "1", "--n_samples", "2"]
        assert main.main(["--train", "y", "--stage", "1"] + args) == 0
        assert main.main(["--train", "y", "--stage", "2", "--max_steps", "1"] + args) == 0
        out = capsys.readouterr().out
        assert "is read-only; its caches go to" in out
        side = Config(data_dir=str(root)).resolved_cache_dir()
        assert side.is_relative_to(tmp_path / "xdg" / "fashion-stackgan")
        assert (side / "images_16.npy").is_file() and (side / "images_64.npy").is_file()
        assert (side / "embeddings.pickle").is_file()
        assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
