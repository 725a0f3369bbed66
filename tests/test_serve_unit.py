"""Serving building blocks without a server: image limits, request types, auth and body-size
middleware, batch isolation, packaging provenance and safety, service configuration."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from pydantic import TypeAdapter, ValidationError

from arm.config import ConfigError, load_config
from arm.serve.config import LimitsConfig
from arm.serve.errors import RequestError
from arm.serve.images import decode_base64, decode_image, open_image, png_base64
from arm.serve.middleware import BearerAuthMiddleware, BodyLimitMiddleware
from arm.serve.runner import BatchRunner
from arm.serve.schemas import DescribeItem, GenerateItem, request_types

REPO = Path(__file__).resolve().parents[1]
LIMITS = LimitsConfig(max_image_bytes=20_000, max_image_pixels=100 * 100)


def encode(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ----------------------------------------------------------------------------- images


def test_decode_png_and_data_url_roundtrip():
    im = Image.new("RGB", (12, 8), (10, 200, 30))
    for payload in (b64(encode(im)), "data:image/png;base64," + b64(encode(im)), b64(encode(im, "JPEG"))):
        out = decode_image(payload, "image", LIMITS)
        assert out.mode == "RGB" and out.size == (12, 8)
    assert decode_image(png_base64(im), "image", LIMITS).getpixel((0, 0)) == (10, 200, 30)


def test_transparent_pixels_become_white():
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert decode_image(b64(encode(im)), "image", LIMITS).getpixel((1, 1)) == (255, 255, 255)


@pytest.mark.parametrize(
    "payload, status, words",
    [
        ("not base64 !!", 400, "base64"),
        ("", 400, "empty"),
        ("data:image/png,rawbytes", 400, "base64"),
        (b64(b"just some text, not an image"), 415, "not a recognised image"),
        (b64(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40), 400, "corrupt PNG"),
        (b64(encode(Image.new("RGB", (8, 8)), "GIF")), 415, "GIF"),
        (b64(encode(Image.new("RGB", (8, 8)), "BMP")), 415, "BMP"),
        (b64(encode(Image.new("RGB", (64, 64)))[:60]), 400, "corrupt"),
        (b64(encode(Image.new("RGB", (101, 100)))), 413, "pixels"),
        (b64(os.urandom(30_000)), 413, "bytes"),
    ],
)
def test_bad_images_are_client_errors_naming_the_field(payload, status, words):
    with pytest.raises(RequestError) as exc:
        decode_image(payload, "image", LIMITS)
    assert exc.value.status == status
    assert exc.value.field == "image"
    assert words in exc.value.message
    assert exc.value.body()["detail"][0]["loc"] == ["image"]


def test_pixel_limit_is_checked_before_decoding():
    # 5000x5000 of one colour compresses to a few KB; decoding it as RGB would take 75 MB
    raw = encode(Image.new("1", (5000, 5000)))
    assert len(raw) < 20_000
    with pytest.raises(RequestError) as exc:
        open_image(raw, "image", LIMITS)
    assert exc.value.status == 413 and "5000x5000" in exc.value.message


def test_oversized_base64_is_refused_without_decoding():
    with pytest.raises(RequestError) as exc:
        decode_base64("A" * 40_000, "image", 20_000)
    assert exc.value.status == 413


# ----------------------------------------------------------------------------- request types


def _check(tp, value):
    return TypeAdapter(tp).validate_python(value)


def test_request_types_enforce_limits_and_strict_json_types():
    T = request_types(LimitsConfig(max_prompt_chars=10, max_n=4))
    assert _check(T.Text, "red circle") == "red circle"
    for bad in ("", "   ", "x" * 11, "bell\x07", 123, None):
        with pytest.raises(ValidationError):
            _check(T.Text, bad)
    assert _check(T.N, 4) == 4
    for bad in (0, 5, "2", True, 1.5):
        with pytest.raises(ValidationError):
            _check(T.N, bad)
    assert _check(T.TopP, 1) == 1.0
    for bad in (0.0, 1.01, float("nan"), "0.5"):
        with pytest.raises(ValidationError):
            _check(T.TopP, bad)
    for bad in (-0.1, float("inf")):
        with pytest.raises(ValidationError):
            _check(T.Temperature, bad)
    assert _check(T.Seed, None) is None
    for bad in (-1, 2**31, True):
        with pytest.raises(ValidationError):
            _check(T.Seed, bad)
    for good in ("4:3", "16:9", "1.85:1", None):
        assert _check(T.AspectRatio, good) == good
    for bad in ("4/3", "wide", "4:3:1", ":3", "4:", "1" * 20 + ":1", 1.33):
        with pytest.raises(ValidationError):
            _check(T.AspectRatio, bad)


# ----------------------------------------------------------------------------- middleware


async def _echo_app(scope, receive, send):
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"echo:" + body})


def _call(app, path="/generate", headers=(), chunks=(b"",), method="POST"):
    sent: list[dict] = []
    queue = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "path": path, "method": method, "headers": [(k.lower(), v) for k, v in headers]}
    asyncio.run(app(scope, receive, send))
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, body


def test_bearer_auth(monkeypatch):
    monkeypatch.setenv("TEST_TOKEN", "s3cret")
    app = BearerAuthMiddleware(_echo_app, token_env="TEST_TOKEN")
    assert _call(app)[0] == 401
    status, body = _call(app, headers=[(b"authorization", b"Bearer wrong")])
    assert status == 401 and json.loads(body)["detail"][0]["loc"] == ["Authorization"]
    assert _call(app, headers=[(b"Authorization", b"Basic s3cret")])[0] == 401
    assert _call(app, headers=[(b"authorization", b"Bearer s3cret")]) == (200, b"echo:")
    for open_path in ("/healthz", "/readyz", "/livez", "/", "/static/app.js"):
        assert _call(app, path=open_path, method="GET")[0] == 200
    for closed in ("/metadata", "/metrics", "/describe", "/docs.json", "/schema.json", "/static"):
        assert _call(app, path=closed, method="GET")[0] == 401


def test_auth_off_without_token(monkeypatch):
    monkeypatch.delenv("TEST_TOKEN", raising=False)
    app = BearerAuthMiddleware(_echo_app, token_env="TEST_TOKEN")
    assert not app.enabled and _call(app)[0] == 200


def test_body_limit_by_length_and_by_stream():
    app = BodyLimitMiddleware(_echo_app, max_bytes=10)
    assert _call(app, chunks=(b"12345", b"67890")) == (200, b"echo:1234567890")
    status, body = _call(app, headers=[(b"content-length", b"11")], chunks=(b"x" * 11,))
    assert status == 413 and b"body" in body
    assert _call(app, chunks=(b"123456", b"78901"))[0] == 413  # chunked, no Content-Length


# ----------------------------------------------------------------------------- batch isolation


class StubPipeline:
    """Stands in for ArmPipeline.run: fails any batch that holds a "boom" task."""

    def __init__(self):
        self.calls: list[int] = []

    def run(self, tasks, seed=None):
        self.calls.append(len(tasks))
        if any(t.text == "boom" for t in tasks):
            raise RuntimeError("tokenizer exploded")
        if tasks[0].kind == "describe":
            return [f"answer {t.seed}" for t in tasks]
        # a requested 4:3 comes back 4 wide, 3 high, as the pipeline would draw it
        return [Image.new("RGB", (4, 3) if t.aspect_ratio == "4:3" else (4, 4), (t.seed % 256, 0, 0)) for t in tasks]


def _gen(prompt, seed):
    return GenerateItem(prompt=prompt, cfg_scale=3.0, temperature=1.0, top_k=0, top_p=1.0, seed=seed)


def test_failing_request_does_not_fail_its_batch():
    pipe = StubPipeline()
    runner = BatchRunner(pipe, LIMITS)
    items = [_gen("a red circle", s) for s in range(7)]
    items.insert(3, _gen("boom", 99))
    out = runner.generate(items)
    assert [o.ok for o in out] == [True, True, True, False, True, True, True, True]
    assert "tokenizer exploded" in out[3].error
    # answers stay in request order with their own seeds
    seeds = [decode_image(o.image, "image", LIMITS).getpixel((0, 0))[0] for o in out if o.ok]
    assert seeds == list(range(7))
    assert pipe.calls[0] == 8 and len(pipe.calls) > 1  # one batch, then bisection


def test_generate_items_pass_their_aspect_ratio():
    out = BatchRunner(StubPipeline(), LIMITS).generate(
        [GenerateItem(prompt="a red circle", cfg_scale=3.0, temperature=1.0, top_k=0, top_p=1.0, seed=s,
                      aspect_ratio=a) for s, a in ((0, "4:3"), (1, None))])
    assert [decode_image(o.image, "image", LIMITS).size for o in out] == [(4, 3), (4, 4)]


def test_describe_items_pass_questions_and_seeds():
    runner = BatchRunner(StubPipeline(), LIMITS)
    png = png_base64(Image.new("RGB", (8, 8)))
    out = runner.describe([DescribeItem(image=png, question=q, max_new_tokens=4, temperature=0.0, seed=s)
                           for q, s in (("how many?", 5), (None, 6))])
    assert [o.text for o in out] == ["answer 5", "answer 6"]


# ----------------------------------------------------------------------------- packaging


def _fake_model_dir(root: Path) -> Path:
    from arm.tokenizer.tokens import tokenizer_fingerprint

    d = root / "arm-base"
    (d / "vt").mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "vocab_layout.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"\0" * 16)
    (d / "vt" / "config.json").write_text("{}")
    (d / "vt" / "model.safetensors").write_bytes(b"\2" * 16)
    vt = {"path": "vt", "sha256": tokenizer_fingerprint(d / "vt")}  # what pretraining records
    (d / "manifest.json").write_text(json.dumps({"visual_tokenizer": vt, "x": None}))
    return d


def test_package_labels_provenance_and_checksums(tmp_path):
    import bentoml

    from arm.serve import store

    # the model store is conftest's per-session BENTOML_HOME: BentoML resolves it once per process
    repo = tmp_path / "repo"
    model_dir = _fake_model_dir(repo / "models")
    (repo / "metrics").mkdir(parents=True)
    (repo / "metrics" / "eval_arm-base.json").write_text(json.dumps({"geneval": {"overall": 0.25}, "vqa": 0.5, "n": None}))
    (repo / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  curate:\n    cmd: arm curate\n    outs:\n    - path: data/curated\n      md5: abc.dir\n"
    )
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True)
    tag, labels = store.package_model(model_dir, name="armtest", repo=repo)
    assert labels["eval.geneval.overall"] == "0.25" and labels["eval.vqa"] == "0.5"
    assert labels["data_version"] != "untracked" and len(labels["git_revision"]) == 40
    stored = bentoml.models.get(tag)
    assert stored.info.labels == labels
    info = store.model_info(stored)
    assert info["eval"] == {"geneval": {"overall": 0.25}, "vqa": 0.5, "n": None}
    packaged = Path(stored.path) / store.MODEL_SUBDIR
    manifest = json.loads((packaged / "manifest.json").read_text())
    assert manifest["visual_tokenizer"]["path"] == "visual_tokenizer"  # self-contained
    assert (packaged / "visual_tokenizer" / "config.json").is_file()
    meta = stored.info.metadata
    assert sorted(meta["files"]) == sorted(meta["file_stats"]) and meta["file_stats"]["model.safetensors"][0] == 16
    store.verify_package(packaged, meta, full=True)
    (packaged / "model.safetensors").write_bytes(b"\1" * 16)
    with pytest.raises(RuntimeError, match="changed"):
        store.verify_package(packaged, meta, full=True)


def test_package_refuses_a_visual_tokenizer_the_model_was_not_trained_with(tmp_path):
    from arm.serve import store

    model_dir = _fake_model_dir(tmp_path)
    (model_dir / "vt" / "model.safetensors").write_bytes(b"\3" * 16)  # retrained since pretraining
    with pytest.raises(store.PackageError, match="fingerprint"):
        store.package_model(model_dir, name="armvt", repo=tmp_path)


def test_package_checks_the_model_stores_copy(tmp_path, monkeypatch):
    """`arm package` hashes the files it staged, then checks the copy BentoML saved into the store
    against those hashes; a copy that differs is refused and removed from the store."""
    import bentoml

    from arm.serve import store

    real_stat_tree = store.stat_tree

    def corrupting_stat_tree(root):  # runs just before BentoML copies the staged dir into the store
        (root / "model.safetensors").write_bytes(b"\7" * 16)  # same size, other content
        return real_stat_tree(root)

    monkeypatch.setattr(store, "stat_tree", corrupting_stat_tree)
    with pytest.raises(store.PackageError, match="does not match"):
        store.package_model(_fake_model_dir(tmp_path), name="armcopy", version="v1", repo=tmp_path)
    with pytest.raises(bentoml.exceptions.NotFound):
        bentoml.models.get("armcopy:v1")


def test_package_refuses_pickles_and_incomplete_dirs(tmp_path):
    from arm.serve import store

    model_dir = _fake_model_dir(tmp_path)
    (model_dir / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(store.PackageError, match="pickle"):
        store.package_model(model_dir, repo=tmp_path)
    (model_dir / "pytorch_model.bin").unlink()
    (model_dir / "vocab_layout.json").unlink()
    with pytest.raises(store.PackageError, match="vocab_layout.json"):
        store.package_model(model_dir, repo=tmp_path)
    with pytest.raises(store.PackageError, match="not found"):
        store.package_model(tmp_path / "nope", repo=tmp_path)


def test_default_model_is_the_gates_promoted_one(tmp_path):
    from arm.serve.package import default_model_dir

    cfg = load_config(REPO / "params.yaml")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "models" / "arm-rl").mkdir(parents=True)
    (tmp_path / "models" / "arm-base").mkdir(parents=True)
    assert default_model_dir(cfg, tmp_path) == (tmp_path / "models" / "arm-rl", None)  # nothing promoted yet
    (tmp_path / "metrics" / "eval_arm-base.json").write_text("{}")
    (tmp_path / cfg.gate.promoted).write_text(json.dumps(
        {"model": "arm-base", "model_dir": "models/arm-base", "metrics_path": "metrics/eval_arm-base.json"}))
    assert default_model_dir(cfg, tmp_path) == (tmp_path / "models/arm-base", tmp_path / "metrics/eval_arm-base.json")


def test_only_a_model_a_passing_gate_vouches_for_is_packaged(tmp_path):
    """By content hash: no verdict, a failed one, or a verdict on other weights refuse; a pass on
    these weights, or the promoted record of them, allow."""
    from arm.eval.gate import model_content_sha256
    from arm.serve.package import check_gate
    from arm.serve.store import PackageError

    cfg = load_config(REPO / "params.yaml")
    model = tmp_path / "models" / "arm-rl"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights v1")
    (tmp_path / "metrics").mkdir()
    with pytest.raises(PackageError, match="no passing gate run"):  # no gate.json at all
        check_gate(cfg, tmp_path, model)
    sha = model_content_sha256(model)
    verdict = tmp_path / cfg.gate.output
    verdict.write_text(json.dumps({"passed": False, "candidate_sha256": sha, "failed": ["threshold:x.y"]}))
    with pytest.raises(PackageError, match="failed the gate"):
        check_gate(cfg, tmp_path, model)
    verdict.write_text(json.dumps({"passed": True, "candidate_sha256": sha}))
    assert check_gate(cfg, tmp_path, model).startswith("passed")
    (model / "model.safetensors").write_bytes(b"weights v2")  # changed after the gate ran
    with pytest.raises(PackageError, match="no passing gate run"):
        check_gate(cfg, tmp_path, model)
    (tmp_path / cfg.gate.promoted).write_text(json.dumps({"model_sha256": model_content_sha256(model)}))
    assert check_gate(cfg, tmp_path, model).startswith("promoted")


def test_metric_labels_use_the_scores_table():
    from arm.serve.store import metric_labels

    metrics = {"model": "arm-rl", "prompts": {"n": 3}, "scores": {"shapes_geneval": {"overall": 0.5, "n": 12}}}
    assert metric_labels(metrics) == {"eval.shapes_geneval.overall": "0.5", "eval.shapes_geneval.n": "12"}


# ----------------------------------------------------------------------------- configuration


def test_serve_config_section_and_presets():
    cfg = load_config(REPO / "params.yaml")
    assert cfg.serve.batching.enabled and cfg.serve.traffic.max_concurrency >= 32
    assert load_config(REPO / "params.yaml", preset="7b").serve.resources["gpu"] == 1
    with pytest.raises(ConfigError, match="serve.limits.max_n"):
        load_config(REPO / "params.yaml", overrides=["serve.limits.max_n=0"])
    with pytest.raises(ConfigError, match="serve.typo"):
        load_config(REPO / "params.yaml", overrides=["serve.typo=1"])


def test_service_definition_takes_its_config_from_params(tmp_path):
    """Importing the service applies traffic limits, batching and the model tag from the config."""
    code = (
        "import json, services.service as s\n"
        "m, a = s.ArmModel, s.ArmService\n"
        "print(json.dumps({'traffic': a.config['traffic'], 'batchable': m.apis['generate_batch'].batchable,"
        " 'max_batch': m.apis['describe_batch'].max_batch_size, 'tag': str(m.inner.bento_model),"
        " 'front_batchable': a.apis['generate'].batchable}))\n"
    )
    env = {**os.environ, "ARM_SET": "serve.traffic.timeout_s=7;serve.traffic.max_concurrency=3;"
                                     "serve.batching.enabled=false;serve.batching.max_batch_size=5;serve.model_tag=arm:v1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"traffic": {"timeout": 7.0, "max_concurrency": 3}, "batchable": False, "max_batch": 5,
                   "tag": "arm:v1", "front_batchable": False}


# ----------------------------------------------------------------------------- commands


def test_package_and_serve_commands_are_registered():
    import typer
    from typer.testing import CliRunner

    from arm.commands import serve

    app = typer.Typer()
    serve.register(app)
    runner = CliRunner()
    out = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert out.exit_code == 0 and "--bento" in out.output and "bentoml serve" in out.output
    out = runner.invoke(app, ["package", "--help"], env={"COLUMNS": "200"})
    assert out.exit_code == 0 and "--no-build" in out.output
    out = runner.invoke(app, ["serve", "--params", str(REPO / "params.yaml"), "--set", "serve.port=0"])
    assert out.exit_code == 2  # config errors stop before bentoml starts


def test_serve_command_and_environment():
    from arm.serve.launch import serve_command, serve_env

    cmd = serve_command("arm_service:abc", "127.0.0.1", 3123)
    assert cmd[1:4] == ["-m", "bentoml", "serve"] and cmd[4:] == ["arm_service:abc", "--host", "127.0.0.1", "--port", "3123"]
    env = serve_env(model_tag="arm:v2", preset="micro", overrides=["serve.limits.max_n=2"], base={"ARM_SET": "seed=3"})
    assert env["ARM_SET"] == "seed=3;serve.model_tag=arm:v2;serve.limits.max_n=2" and env["ARM_PRESET"] == "micro"


# ----------------------------------------------------------------------------- model worker start


class HashCounter:
    """Stands in for hashlib.sha256 and counts the bytes hashed through it (arm.io.sha256_file,
    the visual tokenizer's fingerprint)."""

    def __init__(self, real):
        self.real, self.bytes = real, 0

    def __call__(self, data=b"", **kw):
        self.bytes += len(data)
        counter, h = self, self.real(data, **kw)

        class Counted:
            def update(self, block):
                counter.bytes += len(block)
                h.update(block)

            def __getattr__(self, name):
                return getattr(h, name)

        return Counted()


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """A random micro model whose manifest carries its visual tokenizer's training fingerprint
    (as pretraining writes it), packaged into the model store."""
    import bentoml

    from arm.serve import store
    from arm.serve.smoke import build_random_model
    from arm.tokenizer.tokens import tokenizer_fingerprint

    root = tmp_path_factory.mktemp("start")
    cfg = load_config(REPO / "params.yaml", preset="micro")
    model_dir = build_random_model(cfg, root / "artifacts")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["visual_tokenizer"]["sha256"] = tokenizer_fingerprint(root / "artifacts" / "visual_tokenizer")
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    tag, _ = store.package_model(model_dir, name="armstart", repo=root)
    return cfg, bentoml.models.get(tag)


def _fresh_copy(stored, tmp_path):
    """The stored entry's files in a scratch dir (mtimes kept, as BentoML's own copies keep them),
    with the same metadata: each test tampers with its own copy."""
    import shutil
    from types import SimpleNamespace

    path = tmp_path / "entry"
    shutil.copytree(stored.path, path)
    return SimpleNamespace(path=str(path), info=stored.info, tag=stored.tag)


def test_worker_start_hashes_nothing_and_loads_once(packaged, tmp_path, monkeypatch):
    import hashlib

    from arm.serve.runner import BatchRunner, start_worker

    cfg, stored = packaged
    entry = _fresh_copy(stored, tmp_path)
    size = sum(p.stat().st_size for p in Path(entry.path).rglob("*.safetensors"))
    counter = HashCounter(hashlib.sha256)
    monkeypatch.setattr(hashlib, "sha256", counter)
    runner = start_worker(entry, cfg.serve, cfg.sampling)
    assert isinstance(runner, BatchRunner) and runner.pipeline.visual is not None
    # the old start re-hashed every packaged file, and the visual tokenizer once more
    assert counter.bytes < 1024 < size
    png = png_base64(Image.new("RGB", (48, 48), (200, 0, 0)))
    out = runner.describe([DescribeItem(image=png, question=None, max_new_tokens=2, temperature=0.0, seed=1)])
    assert out[0].ok


def test_worker_start_catches_truncated_and_rewritten_weights(packaged, tmp_path, monkeypatch):
    import hashlib

    from arm.serve import store
    from arm.serve.runner import start_worker

    cfg, stored = packaged
    entry = _fresh_copy(stored, tmp_path)
    weights = Path(entry.path) / store.MODEL_SUBDIR / "model.safetensors"
    data = weights.read_bytes()
    counter = HashCounter(hashlib.sha256)
    monkeypatch.setattr(hashlib, "sha256", counter)

    weights.write_bytes(data[:-100])  # truncated: caught by its size, nothing read
    with pytest.raises(RuntimeError, match=r"size changed \['model.safetensors'\]"):
        start_worker(entry, cfg.serve, cfg.sampling)
    assert counter.bytes == 0

    tampered = bytearray(data)
    tampered[-1] ^= 0xFF
    weights.write_bytes(bytes(tampered))  # same size, new content (and so a new mtime): re-hashed
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))  # however fast the test
    with pytest.raises(RuntimeError, match=r"content of \['model.safetensors'\]"):
        start_worker(entry, cfg.serve, cfg.sampling)
    assert counter.bytes == len(data)  # that file only

    weights.write_bytes(data)  # the original bytes back, with a new mtime: re-hashed once, accepted
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))
    meta = entry.info.metadata
    assert store.verify_package(weights.parent, meta) == ["model.safetensors"]
    (weights.parent / "notes.txt").write_text("x")
    with pytest.raises(RuntimeError, match=r"added \['notes.txt'\]"):
        store.verify_package(weights.parent, meta)


def test_full_verification_on_request_and_for_old_packages(packaged, tmp_path, monkeypatch):
    import hashlib

    from arm.serve import store

    _, stored = packaged
    path = Path(_fresh_copy(stored, tmp_path).path) / store.MODEL_SUBDIR
    meta = dict(stored.info.metadata)
    counter = HashCounter(hashlib.sha256)
    monkeypatch.setattr(hashlib, "sha256", counter)
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    assert store.verify_package(path, meta) == [] and counter.bytes == 0
    assert store.verify_package(path, meta, full=True) == sorted(meta["files"]) and counter.bytes == total
    old = {k: v for k, v in meta.items() if k != "file_stats"}  # packaged before sizes and mtimes were recorded
    assert store.verify_package(path, old) == sorted(meta["files"])
    (path / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match="changed"):
        store.verify_package(path, old)
