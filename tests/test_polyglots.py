"""Genuine photos with XML and text in their metadata import; hostile files are refused
or neutralised by how they are stored and served (see datasets/imaging.py for why).

Every fixture is built with Pillow here, shaped like what cameras, Lightroom,
Photoshop and macOS write."""

import io
import struct

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image as PILImage
from PIL import ImageCms, PngImagePlugin

from datasets.imaging import (
    ALLOWED_FORMATS,
    CONTENT_TYPES,
    ImageRejected,
    VectorImageRejected,
    decode_image,
    has_signature,
)
from datasets.models import Dataset, Image
from datasets.services import dataset_create, images_add
from tests.images import colour_image, encode

pytestmark = pytest.mark.django_db

XMP = (
    b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 9.1-c002">\n'
    b' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
    b'  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
    b'    xmlns:dc="http://purl.org/dc/elements/1.1/" xmp:CreatorTool="Adobe Lightroom Classic 13.0 (Macintosh)">\n'
    b'   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">&lt;b&gt;Harbour&lt;/b&gt; at dusk</rdf:li>'
    b"</rdf:Alt></dc:description>\n"
    b"  </rdf:Description>\n </rdf:RDF>\n</x:xmpmeta>\n" + b" " * 200 + b'\n<?xpacket end="w"?>'
)
PLIST = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n'
    b'<plist version="1.0">\n<dict>\n\t<key>com.apple.print.PageFormat.PMHorizontalRes</key>\n'
    b"\t<real>72</real>\n\t<key>com.apple.print.ticket.creator</key>\n\t<string>com.apple.jobticket</string>\n"
    b"</dict>\n</plist>\n"
)
HOSTILE_HTML = b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"


# --- fixtures shaped like real files --------------------------------------------------------------


def _pixels(seed: int, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _jpeg_with(*segments: bytes, seed: int = 0) -> bytes:
    """A JPEG with extra marker segments right after SOI, where cameras and editors write them."""
    jpeg = encode(_pixels(seed), "JPEG")
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


def _app1_xmp(packet: bytes) -> bytes:
    return _segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + packet)


def _app13_photoshop(resources: dict[int, bytes]) -> bytes:
    """Photoshop image resources: 8BIM, id, empty Pascal name, size, data padded to even."""
    blocks = b"".join(
        b"8BIM" + struct.pack(">H", rid) + b"\x00\x00" + struct.pack(">I", len(data)) + data + b"\x00" * (len(data) % 2)
        for rid, data in resources.items()
    )
    return _segment(0xED, b"Photoshop 3.0\x00" + blocks)


def _iptc(caption: bytes) -> bytes:
    # Record version (2:00), then caption/abstract (2:120).
    return b"\x1c\x02\x00\x00\x02\x00\x04" + b"\x1c\x02\x78" + struct.pack(">H", len(caption)) + caption


def _icc_with_description(text: bytes) -> bytes:
    """A v2 display profile whose only tag is a 'desc' textDescription holding `text`."""
    desc = b"desc\x00\x00\x00\x00" + struct.pack(">I", len(text) + 1) + text + b"\x00" + b"\x00" * 8 + b"\x00" * 70
    desc += b"\x00" * (-len(desc) % 4)
    offset = 128 + 4 + 12
    total = offset + len(desc)
    header = (
        struct.pack(">I4sI4s4s4s", total, b"lcms", 0x02100000, b"mntr", b"RGB ", b"XYZ ")
        + b"\x00" * 12 + b"acspAPPL" + b"\x00" * 24
        + struct.pack(">iii", 0xF6D6, 0x10000, 0xD32D)  # D50, the profile connection space's white
        + b"\x00" * 48
    )  # fmt: skip
    return header + struct.pack(">I4sII", 1, b"desc", offset, len(desc)) + desc


def _srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _png_with_xmp() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", XMP.decode())
    return encode(_pixels(7), "PNG", pnginfo=info)


def _mpo() -> bytes:
    """A JPEG carrying a second, smaller picture (MPF), as many cameras and phones write."""
    buffer = io.BytesIO()
    main, preview = PILImage.fromarray(_pixels(8, 64)), PILImage.fromarray(_pixels(9, 16))
    main.save(buffer, format="MPO", save_all=True, append_images=[preview])
    return buffer.getvalue()


GENUINE = {
    "xmp.jpg": lambda: _jpeg_with(_app1_xmp(XMP), seed=1),
    "plist-in-xmp.jpg": lambda: _jpeg_with(_app1_xmp(PLIST), seed=2),
    "plist-in-photoshop.jpg": lambda: _jpeg_with(_app13_photoshop({0x03E9: PLIST}), seed=3),
    "iptc.jpg": lambda: _jpeg_with(_app13_photoshop({0x0404: _iptc(b"<b>Harbour</b> at dusk & <i>rain</i>")}), seed=4),
    "srgb-icc.jpg": lambda: encode(_pixels(5), "JPEG", icc_profile=_srgb_icc()),
    "markup-icc.jpg": lambda: encode(_pixels(6), "JPEG", icc_profile=_icc_with_description(b"<html><svg> P3")),
    "xmp.png": _png_with_xmp,
    "camera.jpg": _mpo,
}


def _admin_fetch(client, image: Image, kind: str = "original"):
    response = client.get(f"/datasets/images/{image.pk}/{kind}/")
    assert response.status_code == 200
    return response, b"".join(response.streaming_content)


def _assert_served_as_an_image(response, body: bytes, content_type: str) -> None:
    assert response["Content-Type"] == content_type
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert response["Cross-Origin-Resource-Policy"] == "same-origin"
    fmt = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}[content_type]
    assert has_signature(body, fmt)


@pytest.fixture
def dataset() -> Dataset:
    return dataset_create(name="photos")


# --- genuine photos -------------------------------------------------------------------------------


def test_the_fixtures_are_what_pillow_reads_in_real_files():
    with PILImage.open(io.BytesIO(GENUINE["xmp.jpg"]())) as img:
        assert img.info["xmp"] == XMP
    with PILImage.open(io.BytesIO(GENUINE["iptc.jpg"]())) as img:
        assert b"<b>Harbour</b>" in img.info["photoshop"][0x0404]
    with PILImage.open(io.BytesIO(GENUINE["plist-in-photoshop.jpg"]())) as img:
        assert img.info["photoshop"][0x03E9] == PLIST
    profile = ImageCms.ImageCmsProfile(io.BytesIO(_icc_with_description(b"<html><svg> P3")))
    assert ImageCms.getProfileDescription(profile).strip() == "<html><svg> P3"
    with PILImage.open(io.BytesIO(GENUINE["xmp.png"]())) as img:
        assert img.info["XML:com.adobe.xmp"] == XMP.decode()
    with PILImage.open(io.BytesIO(GENUINE["camera.jpg"]())) as img:
        assert img.format == "MPO" and getattr(img, "n_frames", 1) == 2


@pytest.mark.parametrize("name", sorted(GENUINE))
def test_photos_with_metadata_decode(name):
    decoded = decode_image(GENUINE[name]())
    assert decoded.extension == name.rpartition(".")[2] and decoded.image.mode == "RGB"


def test_photos_with_metadata_import_and_are_served_as_images(dataset, admin_client):
    # Made once: an ICC profile carries its creation time, so a second make() a second later differs.
    originals = {name: make() for name, make in GENUINE.items()}
    report = images_add(dataset=dataset, items=[(name, data, "photo") for name, data in originals.items()])
    assert report.skipped == [] and report.imported == len(GENUINE)
    for image in Image.objects.filter(dataset=dataset):
        response, body = _admin_fetch(admin_client, image)
        expected = "image/png" if image.original_name.endswith(".png") else "image/jpeg"
        _assert_served_as_an_image(response, body, expected)
        assert body == originals[image.original_name]


# --- hostile files --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        HOSTILE_HTML,
        b"\xef\xbb\xbf" + HOSTILE_HTML,  # a byte-order mark first
        b" \t\r\n\x0c" + HOSTILE_HTML,  # the whitespace a sniffer skips
        b"\n\n<html><head></head><body onload=alert(1)></body></html>",
    ],
)
def test_html_named_as_an_image_is_not_an_image(dataset, data):
    with pytest.raises(ImageRejected, match=r"^not an image$"):
        decode_image(data)
    report = images_add(dataset=dataset, items=[("photo.jpg", data, "photo")])
    assert report.imported == 0 and report.skipped == [("photo.jpg", "not an image")]


def test_svg_is_refused_as_a_vector_image():
    svg = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect/></svg>'
    with pytest.raises(VectorImageRejected, match="SVG is not supported"):
        decode_image(svg)


def _gif_js_polyglot() -> bytes:
    # A width of 0x2A2F is written "/*": "GIF89a/*" opens a script comment, a GIF
    # comment extension closes it and runs code, and the file's tail comments the rest.
    buffer = io.BytesIO()
    PILImage.new("P", (0x2A2F, 1)).save(buffer, format="GIF", comment=b"*/=alert(document.domain);/*")
    data = buffer.getvalue() + b"*/"
    assert data.startswith(b"GIF89a/*") and data.index(b"*/") == data.index(b"*/=alert")
    return data


HOSTILE = {
    "html-after-iend.png": (lambda: colour_image("red", seed=11) + HOSTILE_HTML, "image/png"),
    "script-comment.jpg": (lambda: encode(_pixels(12), "JPEG", comment=b"<script>alert(1)</script>"), "image/jpeg"),
    "gif-js.gif": (_gif_js_polyglot, "image/gif"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_polyglots_are_neutralised_by_how_they_are_served(dataset, admin_client, name):
    make, content_type = HOSTILE[name]
    data = make()
    assert decode_image(data).extension == name.rpartition(".")[2]
    report = images_add(dataset=dataset, items=[(name, data, "photo")])
    assert report.imported == 1
    image = Image.objects.get(dataset=dataset)
    assert image.file.name.endswith(f"{image.sha256}.{name.rpartition('.')[2]}")
    response, body = _admin_fetch(admin_client, image)
    _assert_served_as_an_image(response, body, content_type)
    assert body == data  # the original bytes, markup and all: the headers are the defence
    response, body = _admin_fetch(admin_client, image, "thumbnail")
    _assert_served_as_an_image(response, body, "image/jpeg" if image.thumbnail != image.file else content_type)


def test_a_file_the_site_never_names_is_downloaded_not_shown(dataset, admin_client):
    images_add(dataset=dataset, items=[("red.png", colour_image("red", seed=13), "photo")])
    name = default_storage.save("datasets/legacy/upload.html", ContentFile(HOSTILE_HTML))
    Image.objects.filter(dataset=dataset).update(file=name, thumbnail=name)
    response, body = _admin_fetch(admin_client, Image.objects.get(dataset=dataset))
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Disposition"].startswith("attachment")
    assert response["X-Content-Type-Options"] == "nosniff" and "sandbox" in response["Content-Security-Policy"]
    assert body == HOSTILE_HTML


# --- signatures -----------------------------------------------------------------------------------


def test_bytes_pillow_reads_but_without_the_formats_signature_are_refused():
    # Pillow opens a TIFF whose header has its magic number's bytes swapped; a stored
    # file must begin with its format's real signature.
    buffer = io.BytesIO()
    PILImage.fromarray(_pixels(14, 8)).save(buffer, format="TIFF")
    data = buffer.getvalue()
    assert data.startswith(b"II*\x00")
    malformed = b"II\x00*" + data[4:]
    with PILImage.open(io.BytesIO(malformed)) as img:
        img.load()
        assert img.format == "TIFF"
    with pytest.raises(ImageRejected, match="malformed TIFF file: it does not begin with the TIFF signature"):
        decode_image(malformed)


@pytest.mark.parametrize("fmt", sorted(set(ALLOWED_FORMATS) - {"MPO"}))
def test_each_format_has_its_exact_signature(fmt):
    data = encode(_pixels(15, 8), fmt)
    assert has_signature(data, fmt) and decode_image(data).format == fmt
    assert not has_signature(b" " + data, fmt) and not has_signature(b"<html>" + data, fmt)
    assert not has_signature(data, "SVG")


def test_every_stored_extension_is_served_as_an_image_type():
    assert set(CONTENT_TYPES) == set(ALLOWED_FORMATS.values())
    assert all(value.startswith("image/") for value in CONTENT_TYPES.values())
