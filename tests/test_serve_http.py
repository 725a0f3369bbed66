"""End to end: a random model with the micro preset's architecture is packaged with
`arm.serve.package` (model store + bento), served with `bentoml serve <bento>` on 127.0.0.1,
and called over HTTP with bentoml.SyncHTTPClient, raw httpx and headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serve")]

REPO = Path(__file__).resolve().parents[1]
TOKEN = "test-token-0123456789"
LIMITS = [
    "serve.limits.max_image_bytes=50000",
    "serve.limits.max_image_pixels=65536",
    "serve.limits.max_prompt_chars=64",
    "serve.limits.max_n=4",
]
# an `arm evaluate` metrics file: the service reports its `scores` table
EVAL = {"model": "arm-random", "prompts": {"manifest_sha256": "x"},
        "scores": {"shapes_geneval": {"overall": 0.125}, "understanding": {"vqa_accuracy": 0.5}}}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from arm.config import load_config
    from arm.serve.launch import ServerProcess, serve_env
    from arm.serve.package import package
    from arm.serve.smoke import build_random_model

    root = tmp_path_factory.mktemp("serve")
    cfg = load_config(REPO / "params.yaml", preset="micro")
    model_dir = build_random_model(cfg, root / "artifacts")
    (root / "eval.json").write_text(json.dumps(EVAL))
    # a test build: no gate ran on this random model
    result = package(cfg, model_dir, repo=REPO, metrics=root / "eval.json", build=True, record=root / "package.json",
                     ungated=True)
    env = serve_env(overrides=LIMITS)
    env.pop("ARM_PRESET", None)  # the bento's build argument (micro) applies
    env["ARM_SERVE_TOKEN"] = TOKEN
    with ServerProcess(root, env, target=result["bento_tag"], log_path=root / "server.log") as srv:
        yield SimpleNamespace(url=srv.url, result=result, cfg=cfg, root=root, server=srv)


@pytest.fixture(scope="module")
def client(served):
    import bentoml

    with bentoml.SyncHTTPClient(served.url, token=TOKEN, timeout=120) as c:
        yield c


def png(b64: str) -> Image.Image:
    im = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert im.format == "PNG"
    return im.convert("RGB")


def post(served, route: str, payload=None, *, token: str | None = TOKEN, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(served.url + route, json=payload, headers=headers, timeout=120, **kw)


def image_b64(size=(48, 48), fmt="PNG", color=(220, 40, 40)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


# ----------------------------------------------------------------------------- health, auth, metadata


def test_healthz_is_open_everything_else_needs_the_token(served):
    assert httpx.get(served.url + "/healthz").status_code == 200
    assert httpx.get(served.url + "/").status_code == 200  # the page shell
    r = httpx.get(served.url + "/metadata")
    assert r.status_code == 401 and "Authorization" in r.text
    assert httpx.get(served.url + "/metadata", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert post(served, "/generate", {"prompt": "a red circle"}, token=None).status_code == 401
    assert post(served, "/generate", {"prompt": "a red circle"}, token="wrong").status_code == 401


def test_metadata_reports_model_data_version_and_eval(served):
    meta = httpx.get(served.url + "/metadata", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    labels = served.result["labels"]
    assert meta["model"] == served.result["model_tag"]
    assert meta["data_version"] == labels["data_version"]
    assert meta["git_revision"] == labels["git_revision"]
    assert meta["eval"] == EVAL["scores"]
    assert meta["labels"]["eval.shapes_geneval.overall"] == "0.125"
    assert meta["batching"]["enabled"] is True
    assert meta["limits"]["max_n"] == 4


# ----------------------------------------------------------------------------- the three tasks


def test_generate_is_seeded_and_independent_of_batch_mates(served, client):
    size = served.cfg.tokenizer.image_size
    out = client.generate(prompt="a large red circle", n=2, seed=5)
    assert out["seed"] == 5 and out["model"] == served.result["model_tag"]
    images = [png(b) for b in out["images"]]
    assert [im.size for im in images] == [(size, size)] * 2
    # image k uses seed + k, whether it ran alone or in a batch with unrelated requests
    prompts = ["a small blue square", "two green triangles", "a large red circle", "a yellow circle"] * 3
    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(client.generate, prompt=p, seed=6 if p == "a large red circle" else 100 + i)
                   for i, p in enumerate(prompts)]
        results = [f.result() for f in futures]
    same = [r for p, r in zip(prompts, results) if p == "a large red circle"]
    for r in same:
        assert png(r["images"][0]).tobytes() == images[1].tobytes()
    # an unseeded request gets a fresh seed and reports it
    a = client.generate(prompt="a large red circle")
    assert isinstance(a["seed"], int) and len(a["images"]) == 1


def test_describe_and_edit(served, client):
    size = served.cfg.tokenizer.image_size
    src = image_b64()
    d = client.describe(image=src, question="what colour is the circle?")
    assert isinstance(d["text"], str) and d["model"] == served.result["model_tag"]
    assert client.describe(image="data:image/png;base64," + src)["model"] == served.result["model_tag"]
    e = client.edit(image=src, instruction="make the circle blue", seed=3)
    assert e["seed"] == 3 and png(e["image"]).size == (size, size)
    again = client.edit(image=src, instruction="make the circle blue", seed=3)
    assert again["image"] == e["image"]


# ----------------------------------------------------------------------------- bad input


BAD = [
    ("/generate", {"prompt": ""}, 400, "prompt"),
    ("/generate", {"prompt": "   "}, 400, "prompt"),
    ("/generate", {"prompt": "x" * 65}, 400, "prompt"),
    ("/generate", {}, 400, "prompt"),
    ("/generate", {"prompt": 123}, 400, "prompt"),
    ("/generate", {"prompt": "a circle", "n": 0}, 400, "n"),
    ("/generate", {"prompt": "a circle", "n": 5}, 400, "n"),
    ("/generate", {"prompt": "a circle", "n": "2"}, 400, "n"),
    ("/generate", {"prompt": "a circle", "temperature": -1}, 400, "temperature"),
    ("/generate", {"prompt": "a circle", "top_p": 0}, 400, "top_p"),
    ("/generate", {"prompt": "a circle", "top_k": -3}, 400, "top_k"),
    ("/generate", {"prompt": "a circle", "cfg_scale": 1e9}, 400, "cfg_scale"),
    ("/generate", {"prompt": "a circle", "seed": True}, 400, "seed"),
    ("/generate", {"prompt": "a circle", "seed": -1}, 400, "seed"),
    ("/generate", {"prompt": "a circle", "aspect_ratio": "wide"}, 400, "aspect_ratio"),
    ("/generate", {"prompt": "a circle", "aspect_ratio": "4:3"}, 400, "aspect_ratio"),  # a square-only model
    ("/describe", {"image": image_b64(fmt="GIF")}, 415, "image"),
    ("/describe", {"image": image_b64(fmt="BMP")}, 415, "image"),
    ("/describe", {"image": base64.b64encode(b"%PDF-1.4 not an image").decode()}, 415, "image"),
    ("/describe", {"image": image_b64()[:80]}, 400, "image"),  # truncated PNG
    ("/describe", {"image": "!!!not base64"}, 400, "image"),
    ("/describe", {"image": image_b64(size=(300, 300))}, 413, "image"),  # 90000 pixels > 65536
    ("/describe", {"image": base64.b64encode(os.urandom(60000)).decode()}, 413, "image"),  # bytes > 50000
    ("/describe", {"image": image_b64(), "question": 7}, 400, "question"),
    ("/describe", {"image": image_b64(), "max_new_tokens": 100000}, 400, "max_new_tokens"),
    ("/describe", {"image": ["a", "b"]}, 400, "image"),
    ("/edit", {"image": image_b64()}, 400, "instruction"),
    ("/edit", {"image": image_b64(), "instruction": ""}, 400, "instruction"),
    ("/edit", {"image": image_b64(fmt="TIFF"), "instruction": "make it blue"}, 415, "image"),
]


@pytest.mark.parametrize("route, payload, status, field", BAD, ids=[f"{r}-{f}-{i}" for i, (r, _, _, f) in enumerate(BAD)])
def test_bad_input_is_4xx_naming_the_field(served, route, payload, status, field):
    r = post(served, route, payload)
    assert r.status_code == status, r.text
    assert field in r.text


def test_non_json_and_oversized_bodies(served):
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    r = httpx.post(served.url + "/generate", content=b"{not json", headers=headers)
    assert 400 <= r.status_code < 500
    r = httpx.post(served.url + "/generate", content=json.dumps({"prompt": "x" * 300_000}).encode(), headers=headers)
    assert r.status_code == 413 and "body" in r.text


def test_bad_requests_never_break_good_ones_or_the_server(served, client):
    good = [dict(prompt=f"a {c} circle", seed=i) for i, c in enumerate(["red", "green", "blue", "yellow"] * 3)]
    bad = [{"prompt": ""}, {"prompt": "a circle", "n": 99}, {"prompt": None}, {"prompt": "a circle", "top_p": 2}] * 3
    with ThreadPoolExecutor(24) as pool:
        g = [pool.submit(post, served, "/generate", p) for p in good]
        b = [pool.submit(post, served, "/generate", p) for p in bad]
        d = [pool.submit(post, served, "/describe", {"image": image_b64(fmt="GIF")}) for _ in range(4)]
        ok = [f.result() for f in g]
        ko = [f.result() for f in b + d]
    assert all(r.status_code == 200 and len(r.json()["images"]) == 1 for r in ok)
    assert all(400 <= r.status_code < 500 for r in ko)
    # deterministic answers despite the concurrent failures
    assert ok[0].json()["images"] == client.generate(prompt="a red circle", seed=0)["images"]
    assert httpx.get(served.url + "/healthz").status_code == 200


# ----------------------------------------------------------------------------- the page, in Chromium


def test_page_generates_describes_and_reports_errors_in_chromium(served, client, chromium, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = chromium
    browser.get(served.url + "/")
    wait = WebDriverWait(browser, 90)
    token = browser.find_element(By.ID, "token")
    token.send_keys(TOKEN)
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", token)
    wait.until(lambda b: served.result["model_tag"] in b.find_element(By.ID, "model-tag").text)

    browser.find_element(By.ID, "gen-prompt").send_keys("a large red circle")
    browser.find_element(By.ID, "gen-n").clear()
    browser.find_element(By.ID, "gen-n").send_keys("2")
    browser.find_element(By.ID, "gen-seed").send_keys("11")
    browser.find_element(By.ID, "gen-submit").click()
    widths = wait.until(lambda b: b.execute_script(
        "const imgs = [...document.querySelectorAll('#gen-results img')];"
        "return imgs.length === 2 && imgs.every(i => i.complete && i.naturalWidth > 0)"
        " ? imgs.map(i => i.naturalWidth) : null;"))
    size = served.cfg.tokenizer.image_size
    assert widths == [size, size]
    shown = browser.execute_script("return [...document.querySelectorAll('#gen-results img')].map(i => i.src)")
    expected = client.generate(prompt="a large red circle", n=2, seed=11)["images"]
    assert shown == ["data:image/png;base64," + b for b in expected]
    assert "seed 11" in browser.find_element(By.ID, "gen-status").text

    picture = tmp_path / "upload.png"
    Image.new("RGB", (48, 48), (40, 80, 220)).save(picture)
    browser.find_element(By.ID, "desc-image").send_keys(str(picture))
    browser.find_element(By.ID, "desc-question").send_keys("what colour is it?")
    browser.find_element(By.ID, "desc-submit").click()
    wait.until(lambda b: "answered" in b.find_element(By.ID, "desc-status").text)
    expected_text = client.describe(image=base64.b64encode(picture.read_bytes()).decode(),
                                    question="what colour is it?")["text"]
    assert browser.find_element(By.ID, "desc-text").get_attribute("textContent") == expected_text

    prompt = browser.find_element(By.ID, "gen-prompt")
    prompt.clear()
    prompt.send_keys("   ")
    browser.find_element(By.ID, "gen-submit").click()
    wait.until(lambda b: "error" in b.find_element(By.ID, "gen-status").get_attribute("class"))
    assert "prompt" in browser.find_element(By.ID, "gen-status").text
