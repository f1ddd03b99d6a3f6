import io

import numpy as np
import pytest
from PIL import Image

from datasets.imaging import ImageRejected, decode_image, load_array, to_array
from tests.images import colour_image, encode


def test_png_and_jpeg_decode_to_rgb():
    for fmt in ("PNG", "JPEG"):
        decoded = decode_image(colour_image("red", seed=1, size=20, fmt=fmt))
        assert decoded.format == fmt
        assert decoded.image.mode == "RGB"
        assert (decoded.width, decoded.height) == (20, 20)


def test_format_comes_from_bytes_not_name():
    # A PNG is a PNG whatever it is called; only the bytes are given here.
    assert decode_image(colour_image("blue", seed=2)).extension == "png"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"\x00\x01random bytes" * 50, "not an image"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "SVG is not supported"),
        (b'\xef\xbb\xbf<?xml version="1.0"?>\n<!-- drawn by hand -->\n<svg width="1"/>', "SVG is not supported"),
    ],
)
def test_non_images_are_rejected_with_a_reason(data, reason):
    with pytest.raises(ImageRejected, match=reason):
        decode_image(data)


def test_truncated_jpeg_is_rejected():
    data = colour_image("green", seed=3, size=64, fmt="JPEG")
    with pytest.raises(ImageRejected, match="truncated"):
        decode_image(data[: len(data) // 2])


def test_decompression_bomb_is_rejected_before_decoding():
    # 5000x5000 pixels in a few KB: refused from the header alone.
    data = encode(np.zeros((5000, 5000), dtype=np.uint8))
    assert len(data) < 100_000
    with pytest.raises(ImageRejected, match="exceeds 1 megapixels"):
        decode_image(data, max_pixels=1_000_000)


def test_alpha_greyscale_and_16_bit_become_rgb():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent: white, as browsers show it
    assert load_array(encode(rgba), 4)[0, 0].tolist() == [255, 255, 255]
    grey = np.full((4, 4), 100, dtype=np.uint8)
    assert load_array(encode(grey), 4)[0, 0].tolist() == [100, 100, 100]
    deep = Image.fromarray(np.full((4, 4), 60000, dtype=np.uint16))
    buffer = io.BytesIO()
    deep.save(buffer, format="PNG")
    assert load_array(buffer.getvalue(), 4)[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (30, 10), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", exif=exif)
    decoded = decode_image(buffer.getvalue())
    assert (decoded.width, decoded.height) == (10, 30)


def test_first_frame_of_animated_gif():
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    red = load_array(buffer.getvalue(), 8)[0, 0]
    assert red[0] > 200 and red[2] < 50


def test_load_array_resizes_to_model_input():
    array = load_array(colour_image("red", seed=4, size=50), 32)
    assert array.shape == (32, 32, 3) and array.dtype == np.uint8


def test_encode_png_round_trips_through_pillow():
    from datasets.archives import encode_png

    pixels = np.random.default_rng(3).integers(0, 256, (32, 24, 3), dtype=np.uint8)
    decoded = decode_image(encode_png(pixels))
    assert decoded.format == "PNG" and (decoded.width, decoded.height) == (24, 32)
    assert np.array_equal(np.asarray(decoded.image), pixels)


# --- large JPEGs decode at the size the model needs -------------------------------------------------


def _photo(width: int = 4000, height: int = 3000, *, mode: str = "RGB", orientation: int = 1) -> bytes:
    """A photo-sized JPEG: smooth colour fields with fine grain, top quarter red."""
    rng = np.random.default_rng(5)
    coarse = Image.fromarray(rng.integers(0, 256, (height // 100, width // 100, 3), dtype=np.uint8))
    pixels = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    pixels = pixels + rng.integers(-20, 21, pixels.shape, dtype=np.int16)
    pixels[: height // 4] = (230, 20, 20)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert(mode)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=90, exif=exif)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo() -> bytes:
    return _photo()


def _decoded_size(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Records the size of what load_array decoded, before its resize."""
    seen: list[tuple[int, int]] = []

    def spy(img: Image.Image, size: int) -> np.ndarray:
        seen.append(img.size)
        return to_array(img, size)  # this module's reference: the real one

    monkeypatch.setattr("datasets.imaging.to_array", spy)
    return seen


def test_large_jpeg_is_drafted_close_to_a_full_decode(photo, monkeypatch):
    full = to_array(decode_image(photo).image, 224)
    seen = _decoded_size(monkeypatch)
    drafted = load_array(photo, 224)
    assert seen == [(500, 375)]  # the 1/8 DCT scale: still at least 224 on both sides
    assert drafted.shape == full.shape == (224, 224, 3) and drafted.dtype == np.uint8
    assert np.abs(drafted.astype(int) - full.astype(int)).mean() < 3


def test_draft_keeps_every_check_on_the_full_size_header(photo):
    with pytest.raises(ImageRejected, match="exceeds 10 megapixels"):
        load_array(photo, 224, max_pixels=10_000_000)
    with pytest.raises(ImageRejected, match="truncated"):
        load_array(photo[: len(photo) // 2], 224)


def test_a_small_jpeg_is_not_drafted(monkeypatch):
    seen = _decoded_size(monkeypatch)
    load_array(colour_image("red", seed=8, size=300, fmt="JPEG"), 224)
    assert seen == [(300, 300)]


def test_drafted_photo_with_exif_rotation_comes_out_upright(monkeypatch):
    data = _photo(orientation=6)  # stored landscape, shown turned a quarter clockwise
    full = to_array(decode_image(data).image, 224)
    seen = _decoded_size(monkeypatch)
    array = load_array(data, 224)
    assert seen == [(375, 500)]  # portrait, and both sides still at least 224
    assert np.abs(array.astype(int) - full.astype(int)).mean() < 3
    red, other = array[:, -20:].reshape(-1, 3).mean(axis=0), array[:, :20].reshape(-1, 3).mean(axis=0)
    assert red[0] > 200 and red[1] < 60 and red[2] < 60  # the stored top is now the right side
    assert not (other[0] > 200 and other[1] < 60)


def test_drafted_greyscale_photo_becomes_rgb():
    array = load_array(_photo(mode="L"), 224)
    assert array.shape == (224, 224, 3)
    assert np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 1], array[..., 2])
