"""The designers' page (app.py): its request handler on a tiny checkpoint, and the real
page served by `python app.py` and driven in headless Chromium."""
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import app
import main
from captions import caption_vocabulary
from config import Config
from model import Stage1_G, Stage2_G
from utils import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(stage1_size=16, stage2_size=64, gf_dim=4, r_num=1)  # a 16 px -> 64 px generator
# the words of the page's checkpoint's training captions: no "lace" among them
VOCABULARY = caption_vocabulary(["The lady wears a short dress. The dress is red. It has "
                                 "floral patterns. It is with chiffon fabric.",
                                 "a pair of black leggings", "a white striped T-shirt",
                                 "a pair of navy pants", "a pair of white shoes"])


def write_tiny_checkpoint(out_dir: Path, stage: int = 2, vocabulary=None) -> Path:
    """OUT_DIR/stage<N>/last.pt in the format training writes, with fresh weights;
    `vocabulary`: its training captions' words (None: as saved before they were kept)."""
    torch.manual_seed(0)
    cfg1 = Config(stage=1, **TINY)
    g1 = Stage1_G(cfg1)
    if stage == 1:
        state = {"netG": g1.state_dict(), "netG_ema": None, "config": cfg1.to_dict(),
                 "stage1_config": None}
    else:
        cfg2 = Config(stage=2, **TINY)
        state = {"netG": Stage2_G(cfg2, g1).state_dict(), "netG_ema": None,
                 "config": cfg2.to_dict(), "stage1_config": cfg1.to_dict()}
    if vocabulary is not None:
        state["vocabulary"] = vocabulary
    return save_checkpoint(state, out_dir / f"stage{stage}" / "last.pt")


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("app_out")
    write_tiny_checkpoint(out, vocabulary=VOCABULARY)
    return out


@pytest.fixture(scope="module")
def studio(out_dir):
    return app.Studio(out_dir, device="cpu")


def pixels(paths):
    return [np.asarray(Image.open(p)) for p in paths]


# ------------------------------------------------------------------- request handler

def test_prompts_in_images_and_timings_out(studio, out_dir):
    r = studio.handle("a red floral dress\n\n  a pair of   black leggings ", 3, 5, None)
    assert len(r.images) == 6 and r.size == 64
    assert r.captions == ["a red floral dress"] * 3 + ["a pair of black leggings"] * 3
    for p in r.images:
        img = Image.open(p)
        assert img.format == "PNG" and img.size == (64, 64)
        assert Path(p).parent.parent == out_dir / "app"
    with zipfile.ZipFile(r.zip_path) as z:
        assert sorted(z.namelist()) == sorted(Path(p).name for p in r.images)
        assert all(z.read(Path(p).name) == Path(p).read_bytes() for p in r.images)
    t = r.seconds
    assert 0 < t["draw"] < t["total"] and 0 < t["png"] < t["total"]
    assert "6 images of 64 px" in r.message and f"{t['total']:.2f} s" in r.message
    draft = studio.handle("a red floral dress", 2, 5, 1)  # the Stage-I draft of Stage II
    assert draft.size == 16 and Image.open(draft.images[0]).size == (16, 16)


def test_same_seed_same_images_and_the_same_as_main_generate(studio, out_dir, tmp_path, capsys):
    prompts = "a pair of white shoes\na green T-shirt"
    a = studio.handle(prompts, 2, 3, 2)
    b = studio.handle(prompts, 2, 3, 2)
    c = studio.handle(prompts, 2, 4, 2)
    assert all(np.array_equal(x, y) for x, y in zip(pixels(a.images), pixels(b.images)))
    assert not all(np.array_equal(x, y) for x, y in zip(pixels(a.images), pixels(c.images)))
    # `main.py --train n` draws the very same images
    args = ["--train", "n", "--net_g", str(out_dir / "stage2" / "last.pt"), "--out_dir",
            str(tmp_path), "--n_samples", "2", "--seed", "3", "--device", "cpu"]  # as the studio
    for p in prompts.splitlines():
        args += ["--prompt", p]
    assert main.main(args) == 0, capsys.readouterr().err
    cli = sorted((tmp_path / "generated").glob("0*.png"))
    assert len(cli) == 4
    assert all(np.array_equal(x, y) for x, y in zip(pixels(cli), pixels(a.images)))


@pytest.mark.parametrize("text", ["", "  \n\t\n ", None])
def test_empty_prompt_is_a_message(studio, text):
    r = studio.handle(text, 2, 0, None)
    assert r.images == [] and r.zip_path is None
    assert "description is empty" in r.message and "Traceback" not in r.message


def test_overlong_prompts_are_read_from_their_start_with_a_note(studio):
    huge = "a long red dress with floral patterns and lace " * 215  # over 10,000 characters
    assert len(huge) > 10_000
    r = studio.handle(f"a pair of navy pants\n{huge}", 1, 0, None)
    assert len(r.images) == 2
    assert f"Description 2 is {len(huge.strip()):,} characters long" in r.message
    assert len(r.captions[1]) < 100  # the caption under the image is shortened too
    # shorter than the cut, still more word pieces than the encoder reads
    long = "a long red dress with floral patterns and lace " * 30
    r = studio.handle(long, 1, 0, None)
    assert len(r.images) == 1 and "longer than the text encoder reads" in r.message


@pytest.mark.parametrize("n,seed,stage,msg", [(0, 0, None, "images per description"),
                                              (9, 0, None, "images per description"),
                                              (2.5, 0, None, "images per description"),
                                              (2, -1, None, "the seed"),
                                              (2, None, None, "the seed"),
                                              (2, "x", None, "the seed"),
                                              (2, float("nan"), None, "the seed"),
                                              (2, float("inf"), None, "the seed"),
                                              (2, 0, 3, "largest size")])
def test_bad_settings_are_messages(studio, n, seed, stage, msg):
    r = studio.handle("a red dress", n, seed, stage)
    assert r.images == [] and msg in r.message


def test_too_many_prompts_is_a_message(studio):
    r = studio.handle("\n".join(f"a red dress {i}" for i in range(app.MAX_PROMPTS + 1)), 1, 0, None)
    assert r.images == [] and f"at most {app.MAX_PROMPTS}" in r.message


def test_a_russian_description_is_drawn_from_its_english_and_said_so(studio):
    r = studio.handle("красное платье с кружевом\na red floral dress\nчёрные лосины", 1, 0, None)
    assert len(r.images) == 3
    assert ("Description 1: drawn as: a red dress with lace; not in the training captions: "
            "lace (the model cannot draw it).") in r.message
    assert "Description 2" not in r.message  # English, and every word known
    assert "Description 3: drawn as: a pair of black leggings." in r.message
    assert r.captions == ["красное платье с кружевом → a red dress with lace",
                          "a red floral dress", "чёрные лосины → a pair of black leggings"]
    assert [Path(p).name[5:] for p in r.images] == ["a-red-dress-with-lace.png",
                                                    "a-red-floral-dress.png",
                                                    "a-pair-of-black-leggings.png"]
    # the same English texts, the same images
    same = studio.handle("a red dress with lace\na red floral dress\na pair of black leggings",
                         1, 0, None)
    assert all(np.array_equal(x, y) for x, y in zip(pixels(same.images), pixels(r.images)))
    r = studio.handle("платье с воланчиками", 1, 0, None)
    assert "no English for: воланчиками (kept as written" in r.message
    known = studio.known()
    assert "dress (платье)" in known and "red (красный)" in known and "chiffon" in known
    assert "floral (в цветочек)" in known and "lace" not in known and "beige" not in known


def test_no_checkpoint_says_which_command_trains_one_then_finds_it(tmp_path):
    s = app.Studio(tmp_path, device="cpu")
    r = s.handle("a red dress", 1, 0, None)
    assert r.images == [] and "python main.py --train y --stage 1" in r.message
    assert s.describe() == r.message
    write_tiny_checkpoint(tmp_path, stage=1)  # training finished while the page was open
    r = s.handle("a red dress with lace", 1, 0, None)
    assert len(r.images) == 1 and r.size == 16
    # saved without the vocabulary of its captions: unknown words cannot be named, it says so
    assert "not in the training" not in r.message and "records no vocabulary" in s.describe()
    assert "the repository's vocabulary" in s.known() and "beige (бежевый)" in s.known()


def test_damaged_checkpoint_is_a_one_line_message(tmp_path, out_dir):
    good = (out_dir / "stage2" / "last.pt").read_bytes()
    bad = tmp_path / "stage2" / "last.pt"
    bad.parent.mkdir()
    bad.write_bytes(good[: len(good) // 2])  # cut off, as by a full disk
    r = app.Studio(tmp_path, device="cpu").handle("a red dress", 1, 0, None)
    assert r.images == [] and "not a readable checkpoint" in r.message
    assert "\n" not in r.message and str(bad) in r.message
    r = app.Studio(tmp_path, net_g=tmp_path / "missing.pt", device="cpu").handle("a dress")
    assert "does not exist" in r.message


def test_requests_at_once_are_served_one_after_another(studio):
    results = [None] * 4

    def click(i):
        results[i] = studio.handle("a blue dress\na pair of shoes", 2, i % 2, None)

    threads = [threading.Thread(target=click, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(len(r.images) == 4 for r in results)
    assert pixels(results[0].images)[0].tobytes() == pixels(results[2].images)[0].tobytes()
    assert len({r.zip_path for r in results}) == 4


def test_time_request_reports_the_median_click(studio):
    t = app.time_request(studio, n=3, repeats=3)
    assert t["n_images"] == 3 and t["size"] == 64
    assert sorted(t["runs_total_s"])[1] == t["total_s"]
    assert 0 < t["draw_s"] < t["total_s"]


def test_bench_times_the_page_request(dfmm, tmp_path):
    import bench
    root, _ = dfmm
    r = bench.main(["--data_dir", str(root), "--stages", "", "--n_images", "0", "--app",
                    "--gf_dim", "4", "--json", str(tmp_path / "bench.json")])["app_request"]
    assert r["n_images"] == 8 and r["size"] == 256
    assert 0 < r["draw_s"] < r["total_s"] and len(r["runs_total_s"]) == 5


# --------------------------------------------------------------------- the real page

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(out_dir, tmp_path_factory):
    """`python app.py` serving the tiny checkpoint on a free port."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "app.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--out_dir", str(out_dir),
                                 "--port", str(port), "--device", "cpu"],
                                cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"app.py did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_a_port_in_use_is_a_one_line_error(out_dir, capsys):
    if not in_ci():  # serving needs gradio (requirements.txt); CI always has it
        pytest.importorskip("gradio")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        rc = app.main(["--out_dir", str(out_dir), "--port", str(busy.getsockname()[1])])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: cannot serve on 127.0.0.1:")
    assert len(err.strip().splitlines()) == 1


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def chromium():
    """Paths of Chromium and its driver; skips without them, except in CI where the
    browser test is mandatory."""
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    driver = shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", browser), ("chromedriver", driver)) if not path]
    for package in ("selenium", "gradio"):
        try:
            __import__(package)
        except ImportError:
            missing.append(f"{package} (pip install -r requirements.txt)")
    if missing:
        why = (f"the browser test needs {', '.join(missing)}; "
               "apt-get install -y chromium chromium-driver")
        if in_ci():
            pytest.fail(why)
        pytest.skip(why)
    return browser, driver


@pytest.fixture
def browser(chromium, tmp_path, monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    binary, driver_path = chromium
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium must not look for drivers online
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1400,1100"):
        opts.add_argument(a)
    opts.add_experimental_option("prefs", {"download.default_directory": str(tmp_path),
                                           "download.prompt_for_download": False})
    d = webdriver.Chrome(service=Service(driver_path), options=opts)
    d.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow",
                                                   "downloadPath": str(tmp_path)})
    yield d
    d.quit()


def test_page_in_a_real_browser(chromium, server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    def css(sel):
        return browser.find_elements(By.CSS_SELECTOR, sel)

    def status():
        return " ".join(e.text for e in css("#status"))

    wait = WebDriverWait(browser, 60, poll_frequency=0.2)
    browser.get(server)
    wait.until(lambda d: "Stage II, 64 px" in " ".join(e.text for e in css("#model")))
    box = wait.until(lambda d: css("#prompts textarea"))[0]
    box.send_keys("a red floral dress\na pair of black leggings")
    css("#generate")[0].click()
    wait.until(lambda d: "images of 64 px" in status())
    per_prompt = app.DEFAULT_PER_PROMPT
    imgs = wait.until(lambda d: len(css("#gallery img")) == 2 * per_prompt and css("#gallery img"))
    assert "8 images of 64 px" in status()
    captions = [i.get_attribute("alt") for i in imgs]
    assert captions == (["a red floral dress"] * per_prompt
                        + ["a pair of black leggings"] * per_prompt)
    for img in imgs:
        data = urllib.request.urlopen(img.get_attribute("src"), timeout=10).read()
        png = Image.open(BytesIO(data))
        assert png.format == "PNG" and png.size == (64, 64)

    css("#download")[0].click()  # one click: every image in one zip
    zips = wait.until(lambda d: list(tmp_path.glob("*.zip")))
    with zipfile.ZipFile(zips[0]) as z:
        assert len([n for n in z.namelist() if n.endswith(".png")]) == 2 * per_prompt

    box.send_keys(Keys.CONTROL, "a")  # as a person empties the box (clear() sends no input event)
    box.send_keys(Keys.DELETE)
    css("#generate")[0].click()
    wait.until(lambda d: "description is empty" in status())
    assert css("#gallery img") == []
    assert "Traceback" not in browser.page_source



def test_a_russian_description_in_a_real_browser(chromium, server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def css(sel):
        return browser.find_elements(By.CSS_SELECTOR, sel)

    def text(sel):
        return " ".join(e.text for e in css(sel))

    wait = WebDriverWait(browser, 60, poll_frequency=0.2)
    browser.get(server)
    wait.until(lambda d: "dress (платье)" in text("#known"))  # what the model knows
    assert "red (красный)" in text("#known") and "lace" not in text("#known")
    box = wait.until(lambda d: css("#prompts textarea"))[0]
    box.send_keys("красное платье с кружевом")
    css("#generate")[0].click()
    wait.until(lambda d: "images of 64 px" in text("#status"))
    assert "drawn as: a red dress with lace" in text("#status")
    assert "not in the training captions: lace (the model cannot draw it)" in text("#status")
    imgs = wait.until(lambda d: len(css("#gallery img")) == app.DEFAULT_PER_PROMPT
                      and css("#gallery img"))
    assert [i.get_attribute("alt") for i in imgs] == \
        ["красное платье с кружевом → a red dress with lace"] * app.DEFAULT_PER_PROMPT
    assert "Traceback" not in browser.page_source
