"""Decoding untrusted image bytes safely. Pure Pillow/numpy: no Django here.

Every image that enters the site (import, prediction) and every image the
trainer reads goes through `decode_image`, so all of them are decoded,
rotated and converted the same way.

Polyglots (a file that is an image and also HTML or script) are defended by
what a browser can do with what the site stores and serves, not by looking for
markup: genuine photos carry XML and free text in their metadata (XMP packets,
Apple property lists, ICC descriptions, IPTC captions), and refusing markup
anywhere in the bytes refused real photos. The site stores the original bytes
under the extension of the format decoded here and serves each file with that
format's image/* type, `nosniff` and a sandboxing CSP (datasets/views.py). Per
the WHATWG MIME Sniffing standard a browser looks for HTML only in a resource's
first bytes and only when its type is missing or unknown; given an image/* type
and `nosniff` it neither renders HTML nor runs script from the bytes, wherever
in the file the markup is. So what must hold here is that the bytes begin with
the exact signature of the format decoded (none starts with `<` or whitespace,
so nothing there can sniff as HTML even without `nosniff`), that SVG, a
document rather than pixels, is refused, and that anything else is "not an image".
"""

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Formats a browser or camera produces. Anything else (SVG, PDF, EPS...) is refused
# by what the bytes are, whatever the file is called. MPO is how Pillow names a JPEG
# that carries a second, smaller picture (many cameras and phones write one): to a
# browser it is a JPEG.
ALLOWED_FORMATS = {
    "JPEG": "jpg", "MPO": "jpg", "PNG": "png", "GIF": "gif", "BMP": "bmp", "WEBP": "webp", "TIFF": "tif",
}  # fmt: skip
# What a stored file is served as, by the extension ALLOWED_FORMATS gave it: the type
# of the format decoded, never a guess from a name.
CONTENT_TYPES = {
    "jpg": "image/jpeg", "png": "image/png", "gif": "image/gif", "bmp": "image/bmp", "webp": "image/webp",
    "tif": "image/tiff",
}  # fmt: skip
DEFAULT_MAX_PIXELS = 40_000_000
# The first bytes of each format, as its specification writes them. Pillow's own checks
# are looser (it opens TIFFs with a malformed header, for one); the stored file's first
# bytes are what a browser sniffs, so they are checked here exactly.
_SIGNATURES = {
    "JPEG": re.compile(rb"\xff\xd8\xff"),
    "MPO": re.compile(rb"\xff\xd8\xff"),
    "PNG": re.compile(rb"\x89PNG\r\n\x1a\n"),
    "GIF": re.compile(rb"GIF8[79]a"),
    "BMP": re.compile(rb"BM"),
    "WEBP": re.compile(rb"RIFF.{4}WEBP", re.S),
    "TIFF": re.compile(rb"II\*\x00|MM\x00\*|II\+\x00|MM\x00\+"),  # classic and BigTIFF, either byte order
}


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


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None) -> DecodedImage:
    """Decode `data` once, refusing non-images, unknown formats and decompression bombs.

    With `draft_size`, a JPEG much larger than that is decoded at the reduced DCT scale
    (1/2, 1/4 or 1/8) that keeps both sides at least `draft_size`: the only pixels a
    model of that input size needs, for a fraction of the work. Every check still runs
    on the full-size header; width and height are then those of the reduced image."""
    if not data:
        raise ImageRejected("empty file")
    if _SVG.match(data[:4096].lstrip(b"\xef\xbb\xbf")):
        raise VectorImageRejected("SVG is not supported: send a PNG, JPEG, GIF, BMP, WebP or TIFF image")
    img: Image.Image | None = None
    try:
        img = Image.open(io.BytesIO(data))
        _check_header(img, data, max_pixels)  # before any pixel is decoded
        rgb = _decode(img, draft_size)
    except ImageRejected:
        raise
    except UnidentifiedImageError as exc:
        raise ImageRejected("not an image") from exc
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"exceeds {max_pixels // 1_000_000} megapixels") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        kind = (img.format if img is not None else None) or "image"
        raise ImageRejected(f"corrupt or truncated {kind} file") from exc
    return DecodedImage(image=rgb, format=str(img.format), width=rgb.width, height=rgb.height)


def _decode(img: Image.Image, draft_size: int | None) -> Image.Image:
    img.seek(0)  # first frame of animated or multi-page files
    if draft_size:
        # A no-op for formats other than JPEG. The request is square, so both sides stay
        # at least draft_size after an EXIF quarter turn swaps them.
        img.draft("RGB", (draft_size, draft_size))
    img.load()
    return _to_rgb(_upright(img))


def _upright(img: Image.Image) -> Image.Image:
    # Most files carry no orientation: skip exif_transpose's copy for them.
    if img.getexif().get(0x0112, 1) == 1:
        return img
    return ImageOps.exif_transpose(img) or img


def _check_header(img: Image.Image, data: bytes, max_pixels: int) -> None:
    # Size comes from the header, before any pixel is decoded.
    if img.format not in ALLOWED_FORMATS:
        raise ImageRejected(f"unsupported image format {img.format}")
    if not has_signature(data, img.format):
        raise ImageRejected(f"malformed {img.format} file: it does not begin with the {img.format} signature")
    if img.width * img.height > max_pixels:
        raise ImageRejected(f"exceeds {max_pixels // 1_000_000} megapixels")
    if img.width < 1 or img.height < 1:
        raise ImageRejected("image has no pixels")


def has_signature(data: bytes, fmt: str) -> bool:
    """Whether `data` begins with the exact signature of Pillow's format `fmt`."""
    signature = _SIGNATURES.get(fmt)
    return signature is not None and signature.match(data) is not None


def content_type(name: str) -> str | None:
    """The image/* type a stored file is served as, or None for a name this module never gives."""
    return CONTENT_TYPES.get(PurePosixPath(name).suffix.removeprefix("."))


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


class TooManyPixels(ValueError):
    """The images of one request hold more pixels in all than it may decode (HTTP 413)."""


def check_total_pixels(images: Sequence[bytes], limit: int) -> None:
    """Refuse, from the headers alone (no pixel decoded), a batch whose images hold
    more than `limit` pixels in all: each may be under the per-image limit and the
    batch still cost seconds of CPU. Unreadable headers count 0: decoding rejects them."""
    total = 0
    for data in images:
        try:
            with Image.open(io.BytesIO(data)) as img:
                total += img.width * img.height
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
            continue
    if total > limit:
        raise TooManyPixels(
            f"The images hold {total / 1e6:,.1f} megapixels in all; one request may send at most {limit / 1e6:,.1f}."
        )


def load_array(data: bytes, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """What a model of input `size` sees of encoded `data`, checked as any upload is; a
    large JPEG is drafted, so a 4,000 px photo costs milliseconds, not a full decode."""
    return to_array(decode_image(data, max_pixels=max_pixels, draft_size=size).image, size)
