"""Decoding untrusted image bytes safely. Pure Pillow/numpy: no Django here.

Every image that enters the site (import, prediction) and every image the
trainer reads goes through `decode_image`, so all of them are decoded,
rotated and converted the same way.
"""

import io
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Formats a browser or camera produces. Anything else (SVG, PDF, EPS...) is refused
# by what the bytes are, whatever the file is called.
ALLOWED_FORMATS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "BMP": "bmp", "WEBP": "webp", "TIFF": "tif"}
DEFAULT_MAX_PIXELS = 40_000_000
# Markup inside an image file makes it an HTML/SVG polyglot that a browser could run.
_MARKUP = re.compile(rb"<(?:html|head|body|script|svg|iframe|object|embed|!doctype)[\s>/]", re.IGNORECASE)


class ImageRejected(ValueError):
    """The bytes are not an image the site accepts; the message says why, for people."""


class VectorImageRejected(ImageRejected):
    """An SVG: a document that can carry scripts and links, not pixels (HTTP 415)."""


# An XML declaration, comments and a doctype may come before the root element.
_SVG = re.compile(rb"^\s*(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*|<!DOCTYPE[^>]*>\s*)*<svg[\s>/]", re.I | re.S)


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, upright
    format: str  # Pillow's name for what the bytes really are, e.g. "JPEG"
    width: int
    height: int

    @property
    def extension(self) -> str:
        return ALLOWED_FORMATS[self.format]


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode `data` once, refusing non-images, unknown formats and decompression bombs."""
    if not data:
        raise ImageRejected("empty file")
    if _SVG.match(data[:4096].lstrip(b"\xef\xbb\xbf")):
        raise VectorImageRejected("SVG is not supported: send a PNG, JPEG, GIF, BMP, WebP or TIFF image")
    img: Image.Image | None = None
    try:
        img = Image.open(io.BytesIO(data))
        _check_header(img, max_pixels)  # before any pixel is decoded
        img.seek(0)  # first frame of animated or multi-page files
        img.load()
        rgb = _to_rgb(_upright(img))
    except ImageRejected:
        raise
    except UnidentifiedImageError as exc:
        raise ImageRejected("not an image") from exc
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"exceeds {max_pixels // 1_000_000} megapixels") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        kind = (img.format if img is not None else None) or "image"
        raise ImageRejected(f"corrupt or truncated {kind} file") from exc
    if _MARKUP.search(data):
        raise ImageRejected(f"{img.format} file with HTML or script inside (polyglot)")
    return DecodedImage(image=rgb, format=str(img.format), width=rgb.width, height=rgb.height)


def _upright(img: Image.Image) -> Image.Image:
    # Most files carry no orientation: skip exif_transpose's copy for them.
    if img.getexif().get(0x0112, 1) == 1:
        return img
    return ImageOps.exif_transpose(img) or img


def _check_header(img: Image.Image, max_pixels: int) -> None:
    # Size comes from the header, before any pixel is decoded.
    if img.format not in ALLOWED_FORMATS:
        raise ImageRejected(f"unsupported image format {img.format}")
    if img.width * img.height > max_pixels:
        raise ImageRejected(f"exceeds {max_pixels // 1_000_000} megapixels")
    if img.width < 1 or img.height < 1:
        raise ImageRejected("image has no pixels")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels become white, as they look in a browser, not black.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits instead of clipping at 255.
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() or 1.0
        return Image.fromarray((arr * (255.0 / top)).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def to_array(img: Image.Image, size: int) -> np.ndarray:
    """The uint8 (size, size, 3) array a model sees; training and serving both use this."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def load_array(data: bytes, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    return to_array(decode_image(data, max_pixels=max_pixels).image, size)
