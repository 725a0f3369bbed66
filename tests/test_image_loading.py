"""One image-loading path (issue 16, item 1): a phone JPEG with an EXIF orientation tag and a
16-bit grey PNG reach the model as the same pixels through curation (the curated store, which
the tokenizer trains on), `arm describe` (the sampling path) and the BentoML service."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from arm.commands.sample import _check_image
from arm.config import load_config
from arm.data.curate import curate
from arm.data.images import ImageError, ImageLimits, decode, to_rgb
from arm.data.store import CuratedStore
from arm.sample.images import as_pil
from arm.serve.config import LimitsConfig
from arm.serve.images import decode_image, png_base64
from arm.serve.runner import BatchRunner
from arm.serve.schemas import DescribeItem
from arm.tokenizer.images import pil_to_uint8, to_pixels

REPO = Path(__file__).resolve().parents[1]
RED, BLUE = (255, 0, 0), (0, 0, 255)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def phone_jpeg() -> bytes:
    """64x32 as stored, red top-left corner; EXIF orientation 6: "turn 90 degrees clockwise to
    display", so the upright picture is 32x64 with the red corner at its top right."""
    im = Image.new("RGB", (64, 32), BLUE)
    im.paste(RED, (0, 0, 16, 16))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(im, "JPEG", quality=95, exif=exif.tobytes())


def grey16_png() -> bytes:
    """48x48 16-bit grey: thirds of 0, 32768 and 65535 (black, mid-grey, white)."""
    arr = np.repeat(np.array([0, 32768, 65535], dtype=np.uint16), 16)[None, :].repeat(48, axis=0)
    im = Image.fromarray(arr)
    assert im.mode.startswith("I;16")
    return encode(im, "PNG")


class CapturingPipeline:
    """Stands in for ArmPipeline in the model process: keeps the tasks it is given."""

    def __init__(self):
        self.tasks = []

    def run(self, tasks):
        self.tasks += tasks
        return ["a caption" for _ in tasks]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("image_loading")
    folder = tmp / "folder"
    folder.mkdir()
    files = {"phone.jpg": phone_jpeg(), "grey16.png": grey16_png()}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        (folder / name).with_suffix(".txt").write_text(f"a picture called {name}")
    sources = [{"type": "image_folder", "name": "folder", "path": str(folder), "task": "generate",
                "image_ext": ["png", "jpg"]}]
    cfg = load_config(REPO / "params.yaml", preset="micro", overrides=[
        f"data.store={tmp / 'store'}", f"data.metrics={tmp / 'curate.json'}", "data.sources=" + json.dumps(sources)])
    metrics = curate(cfg)
    assert metrics["n_kept"] == 2, metrics
    with CuratedStore(cfg.data.store) as store:
        kept = store.samples()
        stored = {Path(ref).name: store.load_image(sha) for ref, sha in zip(kept["ref"], kept["image_sha"])}
    return cfg, folder, files, stored


def model_input(image, size: int) -> torch.Tensor:
    # ArmPipeline.encode_images hands as_pil(image) to VisualTokenizer.encode, which calls to_pixels.
    return to_pixels([as_pil(image)], size)


def through_each_path(inputs, name: str) -> dict[str, torch.Tensor]:
    cfg, folder, files, stored = inputs
    size = cfg.tokenizer.image_size
    # the service: the front checks and normalises the upload, the model process decodes its PNG
    limits = LimitsConfig()
    front = png_base64(decode_image(base64.b64encode(files[name]).decode(), "image", limits))
    pipe = CapturingPipeline()
    out = BatchRunner(pipe, limits).describe([DescribeItem(image=front, max_new_tokens=4, temperature=0.0, seed=0)])
    assert out[0].ok, out[0].error
    return {
        # curation: what the tokenizer trains on (tokenizer/data.py and tokens.py read the store with pil_to_uint8)
        "curated": torch.from_numpy(pil_to_uint8(stored[name], size)).float()[None] / 255.0,
        "curated_to_pixels": model_input(stored[name], size),
        "arm describe": model_input(_check_image(folder / name), size),
        "service": model_input(pipe.tasks[0].image, size),
    }


def test_a_rotated_phone_jpeg_reaches_the_model_upright_and_identical_on_every_path(inputs):
    _, _, _, stored = inputs
    assert stored["phone.jpg"].size == (32, 64)  # upright: EXIF orientation applied
    seen = through_each_path(inputs, "phone.jpg")
    first = seen["curated"]
    for path, pixels in seen.items():
        assert torch.equal(pixels, first), f"{path} differs from curation"
    px = (first[0] * 255).round().permute(1, 2, 0).numpy()
    # the red corner is now top right; the top left is blue
    assert np.abs(px[3, -4] - RED).max() < 40 and np.abs(px[3, 3] - BLUE).max() < 40
    assert np.abs(px[-4, -4] - BLUE).max() < 40


def test_a_16_bit_grey_png_is_scaled_not_clipped_and_identical_on_every_path(inputs):
    seen = through_each_path(inputs, "grey16.png")
    first = seen["curated"]
    for path, pixels in seen.items():
        assert torch.equal(pixels, first), f"{path} differs from curation"
    levels = (first[0] * 255).round().int()
    assert (levels == levels[0:1, 0:1, :]).all()  # grey: R = G = B, and every row alike
    assert levels[0, 0, ::16].tolist() == [0, 128, 255]  # 32768 / 257 = 127.5 -> 128, not white


# ----------------------------------------------------------------------------- the shared decoder


def test_limits_are_checked_from_the_header_and_name_the_setting():
    limits = ImageLimits(max_pixels=32 * 32, max_bytes=1 << 20, pixels_setting="serve.limits.max_image_pixels")
    with pytest.raises(ImageError) as e:
        decode(encode(Image.new("RGB", (33, 32)), "PNG"), "upload", limits)
    assert e.value.reason == "oversized" and str(e.value).startswith("upload: PNG 33x32 = 1056 pixels")
    assert "serve.limits.max_image_pixels=1024" in str(e.value)
    gif_only = ImageLimits(1 << 20, 1 << 20, formats=("GIF",))
    with pytest.raises(ImageError) as e:
        decode(encode(Image.new("RGB", (8, 8)), "PNG"), "upload", gif_only)
    assert e.value.reason == "unsupported_format" and "PNG images are not supported; use one of GIF" in str(e.value)


def test_pil_images_given_directly_get_the_same_normalisation():
    # an API user's Image.open(jpeg) that still carries its orientation tag, and an RGBA image
    raw = Image.open(io.BytesIO(phone_jpeg()))
    assert to_rgb(raw).size == (32, 64) and as_pil(raw).size == (32, 64)
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert as_pil(rgba).getpixel((0, 0)) == (255, 255, 255)  # transparent is paper, not black
    # one resize policy: a uint8 tensor is resized exactly as the same PIL image; a float tensor
    # with Pillow's filter too, without its 8-bit rounding between passes
    from skimage import data as skdata

    for h, w in ((20, 30), (96, 80)):
        arr = np.array(Image.fromarray(skdata.coffee()).resize((w, h), Image.Resampling.LANCZOS))
        via_pil = to_pixels([Image.fromarray(arr)], 48)
        assert torch.equal(to_pixels(torch.from_numpy(arr).permute(2, 0, 1)[None], 48), via_pil)
        via_float = to_pixels(torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255, 48)
        # Pillow rounds to 8 bits after each of its two passes; the float resize does not
        assert (via_float - via_pil).abs().max() <= 2 / 255 and (via_float - via_pil).abs().mean() < 0.5 / 255


def test_arm_describe_refuses_with_curations_limits_naming_file_and_setting(tmp_path):
    from arm.sample.images import ImageInputError, load_image

    big = tmp_path / "big.png"
    big.write_bytes(encode(Image.new("1", (5000, 5000)), "PNG"))  # 25 Mpx, a few kB on disk
    with pytest.raises(ImageInputError, match=r"big.png: unreadable image: PNG 5000x5000 = 25000000 pixels, "
                                              r"over the limit data.max_pixels=16777216"):
        load_image(big)
    small = ImageLimits(max_pixels=1 << 20, max_bytes=100, bytes_setting="data.max_file_bytes")
    with pytest.raises(ImageInputError, match=r"big.png: .* bytes, over the limit data.max_file_bytes=100"):
        load_image(big, small)
