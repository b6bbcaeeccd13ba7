"""CLIP preprocessing against transformers' CLIPImageProcessor on PIL images of several sizes and modes."""


import numpy as np
import pytest
from PIL import Image
from transformers import CLIPImageProcessor

from xllava_jax.data.images import PAD_COLOR, expand_to_square, open_image, preprocess, to_rgb

SIZES = [(336, 336), (500, 375), (200, 640), (1024, 768), (101, 57)]
MODES = ["RGB", "RGBA", "L", "P", "CMYK"]


@pytest.fixture(scope="module")
def clip():
    return CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})


def make_image(w: int, h: int, mode: str, seed: int) -> Image.Image:
    """Gradient + noise + shapes, converted to `mode` (RGBA with varying alpha)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    rgba = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256,
                     128 + (x % 128)], -1).astype(np.int64)
    rgba = np.clip(rgba + rng.integers(-40, 40, rgba.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(rgba, "RGBA")
    if mode == "P":
        return img.convert("RGB").convert("P", palette=Image.ADAPTIVE)
    return img if mode == "RGBA" else img.convert(mode)


@pytest.mark.parametrize("mode", MODES)
def test_matches_clip_image_processor(clip, mode):
    worst = 0.0
    for i, (w, h) in enumerate(SIZES):
        img = make_image(w, h, mode, i)
        ref = clip(images=img, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        ours = preprocess(img, 336, pad=False)
        assert ours.shape == (336, 336, 3) and ours.dtype == np.float32
        ref_pad = clip(images=expand_to_square(to_rgb(img)), return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        worst = max(worst, np.abs(ours - ref).max(), np.abs(preprocess(img, 336, pad=True) - ref_pad).max())
    # 1/255 per value in pixel units == (1/255)/std in normalized units
    assert worst <= (1 / 255) / 0.2613, worst


def test_jpeg_file_roundtrip(clip, tmp_path):
    img = make_image(640, 480, "RGB", 7)
    img.save(tmp_path / "a.jpg", quality=90)
    loaded = open_image(tmp_path / "a.jpg")
    ref = clip(images=Image.open(tmp_path / "a.jpg"), return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    assert np.abs(preprocess(loaded, pad=False) - ref).max() <= (1 / 255) / 0.2613
    assert np.array_equal(preprocess(open_image((tmp_path / "a.jpg").read_bytes())), preprocess(loaded))


def test_pad_uses_mean_colour_and_centres():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    sq = np.asarray(expand_to_square(img))
    assert sq.shape == (40, 40, 3)
    assert tuple(sq[0, 0]) == PAD_COLOR == (122, 116, 104)
    assert tuple(sq[10, 0]) == (255, 0, 0) and tuple(sq[29, 39]) == (255, 0, 0) and tuple(sq[30, 0]) == PAD_COLOR
    out = preprocess(img, 28, pad=True)
    assert np.allclose(out[0, 0], 0.0, atol=0.02)  # mean colour normalizes to ~0


def test_rgba_transparency_composited_on_white():
    img = Image.new("RGBA", (30, 30), (0, 0, 0, 0))
    assert np.asarray(to_rgb(img)).min() == 255
