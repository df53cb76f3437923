"""A corpus of hostile, broken and unusual uploads, generated from one real film.

Each `Upload` says what the server must answer: a status with words its message must contain, or
(for valid but unusual images) 201 with the film the server must have decoded (`film`, compared
within `tolerance` grey levels). Files are built here, in memory, from the Kermany film the tests
pass in; nothing is stored in the repository.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

MiB = 1024 * 1024
MAX_UPLOAD_BYTES = 8 * MiB
"""The live server of these tests runs with CXR_MAX_UPLOAD_BYTES and CXR_MAX_PIXELS set to these
(below the defaults), so the cases between the two limits prove the settings are read."""
MAX_PIXELS = 20_000_000


@dataclass
class Upload:
    name: str
    data: bytes | Callable[[], bytes] = b""
    """The file, or a function making it (large files are made only when sent)."""
    filename: str = "xray.png"
    status: int = 201
    words: tuple[str, ...] = ()
    """Lower-case fragments the JSON `detail` must contain (4xx)."""
    film: np.ndarray | None = None
    """The H×W uint8 film the server must decode (201)."""
    tolerance: int = 0
    reference: bool = True
    """201: also compare the probabilities with those of `film` uploaded as a plain 8-bit PNG."""
    request: dict[str, Any] = field(default_factory=dict)
    """Overrides of the HTTP request (other field names, a JSON body, raw content, headers...)."""
    stored_filename: str | None = None
    """201: the file name the server must report (None: not checked)."""


# ------------------------------------------------------------------------------ encoders
def encode(img: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring(width: int, height: int, idat: bytes = b"") -> bytes:
    """A well-formed PNG header declaring width×height (8-bit grey) with the given compressed data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat or zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def png_bomb(side: int) -> bytes:
    """A real decompression bomb: a complete side×side all-black PNG, a few dozen KiB compressed."""
    row = b"\0" + b"\0" * side  # filter byte + pixels
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return png_declaring(side, side, idat)


def jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOF0/SOF2) claiming width×height."""
    data = bytearray(jpeg)
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        i = data.find(marker)
        if i >= 0:
            struct.pack_into(">HH", data, i + 5, height, width)
            return bytes(data)
    raise ValueError("no SOF0/SOF2 marker")


def jpeg_with_orientation(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


def dicom(
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    modality: str = "DX",
    sop_class: str = SecondaryCaptureImageStorage,
    transfer_syntax: str = ExplicitVRLittleEndian,
    rows_cols: tuple[int, int] | None = None,
    pixel_data: bytes | None = None,
    **attributes: Any,
) -> bytes:
    """A DICOM Part 10 file. `pixels`: H×W, F×H×W or H×W×3 array (None: no pixel data element)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset("upload.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientName = "Hostile^Corpus"
    ds.PatientID = "RELIABILITY-0001"
    if pixels is not None or rows_cols is not None:
        shape = pixels.shape if pixels is not None else (*rows_cols, 1)  # type: ignore[misc]
        frames = shape[0] if pixels is not None and pixels.ndim == 3 and photometric != "RGB" else 1
        rows, cols = (shape[-2], shape[-1]) if frames > 1 else (shape[0], shape[1])
        if rows_cols is not None:
            rows, cols = rows_cols
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
        ds.PhotometricInterpretation = photometric
        if photometric == "RGB":
            ds.PlanarConfiguration = 0
        itemsize = pixels.dtype.itemsize if pixels is not None else 2
        ds.BitsAllocated = ds.BitsStored = 8 * itemsize
        ds.HighBit = 8 * itemsize - 1
        ds.PixelRepresentation = int(pixels is not None and pixels.dtype.kind == "i")
        if frames > 1:
            ds.NumberOfFrames = frames
        if pixels is not None:
            ds.PixelData = pixels.tobytes()
    if pixel_data is not None:
        ds.PixelData = pixel_data
    for key, value in attributes.items():
        setattr(ds, key, value)
    if transfer_syntax != ExplicitVRLittleEndian:
        ds["PixelData"].is_undefined_length = True
        ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def multipart(boundary: str, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    """A hand-written multipart/form-data body (name, filename or None, content)."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def raw_file_part(filename: bytes, content: bytes) -> dict[str, Any]:
    """Request overrides sending `content` in field `file` with exactly these file-name bytes
    (an HTTP client would percent-encode control characters)."""
    boundary = b"cxrraw"
    body = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n--" + boundary + b"--\r\n"
    )
    return {"content": body, "headers": {"Content-Type": "multipart/form-data; boundary=cxrraw"}}


def stretch(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    return np.round((values - lo) / (hi - lo) * 255.0).astype(np.uint8)


# -------------------------------------------------------------------------------- corpus
def build(jpeg: bytes) -> list[Upload]:
    """The corpus, from the bytes of one real JPEG film."""
    with Image.open(io.BytesIO(jpeg)) as original:
        small = original.convert("L")
        small.thumbnail((256, 256))
    g = stretch(np.asarray(small, dtype=np.float64))  # spans 0..255, so 16-bit and DICOM round-trips are exact
    gray = Image.fromarray(g)
    png = encode(gray, "PNG")
    h = g.shape[0]

    rgba = np.dstack([g, g, g, np.full_like(g, 255)])
    rgba[: h // 4, :, 3] = 0  # a transparent band on top: composited on black
    with_band = g.copy()
    with_band[: h // 4] = 0
    palette = Image.frombytes("P", gray.size, g.tobytes())  # a grey palette: index i → (i, i, i)
    palette.putpalette([v for i in range(256) for v in (i, i, i)])

    ct_frames = np.stack([(g.astype(np.int16) * 8 - 1024)] + [np.full_like(g, -1000, dtype=np.int16)] * 2)
    mono1 = (4095 - g.astype(np.uint16) * 16).astype(np.uint16)
    half_png = encode(gray, "PNG")
    bad_crc = bytearray(half_png)
    bad_crc[-20] ^= 0xFF  # inside the last IDAT chunk's data: the CRC no longer matches
    gif_frames = [Image.fromarray(g), Image.fromarray(255 - g)]
    gif = encode(gif_frames[0], "GIF", save_all=True, append_images=gif_frames[1:], duration=100, loop=0)
    svg = (
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="512" height="512">'
        b"<script>alert(document.cookie)</script><rect width='512' height='512'/></svg>"
    )
    pdf = b"%PDF-1.7\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"

    def big(size: int = 50 * MiB) -> bytes:
        return b"\x89PNG\r\n\x1a\n" + b"\0" * (size - 8)

    def chunked(make: Callable[[], bytes]) -> Callable[[], Any]:
        def body() -> Any:
            data = make()
            # a generator: no Content-Length, the body arrives chunked and the limit must hold while it streams
            boundary = "cxrchunked"
            head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'.encode()

            def gen() -> Any:
                yield head
                for i in range(0, len(data), MiB):
                    yield data[i : i + MiB]
                yield f"\r\n--{boundary}--\r\n".encode()

            return {"content": gen(), "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"}}

        return body

    return [
        # ---------------------------------------------------------------- not an image we take
        Upload("zero bytes", b"", status=422, words=("empty",)),
        Upload("text renamed .png", b"just some notes, not an image\n" * 20, status=415, words=("unsupported",)),
        Upload("PDF renamed .png", pdf, status=415, words=("unsupported",)),
        Upload("HTML with script renamed .jpg", b"<html><script>alert(1)</script>", "x.jpg", 415, ("unsupported",)),
        Upload("SVG with script", svg, "chest.svg", 415, ("unsupported",)),
        Upload("animated GIF", gif, "chest.gif", 415, ("unsupported",)),
        Upload("GIF polyglot", b"GIF89a/*" + b"\0" * 32 + b"*/=alert(1)", "x.gif", 415, ("unsupported",)),
        Upload("TIFF", encode(gray, "TIFF"), "chest.tif", 415, ("unsupported",)),
        Upload("BMP", encode(gray, "BMP"), "chest.bmp", 415, ("unsupported",)),
        Upload("WebP", encode(gray, "WEBP"), "chest.webp", 415, ("unsupported",)),
        Upload("ZIP archive", b"PK\x03\x04" + b"\0" * 200, "films.zip", 415, ("unsupported",)),
        # ----------------------------------------------------------------------- broken files
        Upload("truncated JPEG", jpeg[: len(jpeg) // 3], "x.jpg", 422, ("jpeg", "truncated")),
        Upload("JPEG header only", jpeg[:20], "x.jpg", 422, ("jpeg",)),
        Upload("JPEG start marker only", b"\xff\xd8\xff", "x.jpg", 422, ("jpeg",)),
        Upload("PNG signature only", png[:8], status=422, words=("png",)),
        Upload("truncated PNG", png[: len(png) // 2], status=422, words=("png",)),
        Upload("PNG with a bad CRC", bytes(bad_crc), status=422, words=("png",)),
        Upload("PNG declaring 0x0", png_declaring(0, 0), status=422, words=("empty image",)),
        Upload("DICOM preamble only", b"\0" * 128 + b"DICM", "x.dcm", 422, ("dicom",)),
        Upload("DICOM without pixel data", dicom(None, rows_cols=(512, 512)), "x.dcm", 422, ("no pixel data",)),
        Upload("DICOM without an image", dicom(None, modality="SR"), "x.dcm", 422, ("no image",)),
        Upload(
            "DICOM with truncated pixel data",
            dicom(None, rows_cols=(512, 512), pixel_data=b"\0" * 1000),
            "x.dcm",
            422,
            ("dicom",),
        ),
        Upload(
            "DICOM JPEG 2000 with garbage pixel data",
            dicom(
                None, rows_cols=(64, 64), transfer_syntax=JPEG2000Lossless, pixel_data=b"\xfe\xff\0\xe0" + b"\0" * 60
            ),
            "x.dcm",
            422,
            ("dicom",),
        ),
        # ---------------------------------------------------------------- over the limits
        Upload("PNG bomb: header of 50000x50000", png_declaring(50_000, 50_000), status=413, words=("megapixels",)),
        Upload("PNG bomb: complete 8000x8000 black film", lambda: png_bomb(8000), status=413, words=("megapixels",)),
        Upload(
            "PNG of 25 MP: over CXR_MAX_PIXELS only", lambda: png_bomb(5000), status=413, words=("20.0 megapixels",)
        ),
        Upload(
            "JPEG bomb: frame header of 60000x60000",
            jpeg_with_size(jpeg, 60_000, 60_000),
            "x.jpg",
            413,
            ("megapixels",),
        ),
        Upload(
            "DICOM bomb: 65535x65535",
            dicom(None, rows_cols=(65_535, 65_535), pixel_data=b"\0" * 64),
            "x.dcm",
            413,
            ("megapixels",),
        ),
        Upload("50 MB file", big, "huge.png", 413, ("upload limit",)),
        Upload(
            "10 MB file: over CXR_MAX_UPLOAD_BYTES only",
            lambda: big(10 * MiB),
            "big.png",
            413,
            ("8.0 mib upload limit",),
        ),
        Upload(
            "50 MB streamed without Content-Length", request={"body": chunked(big)}, status=413, words=("upload limit",)
        ),
        # ------------------------------------------------------------------ malformed requests
        Upload("wrong field name", png, request={"field": "image"}, status=422, words=("file",)),
        Upload(
            "file sent as a text field",
            request={"data": {"file": "not a file"}, "files": None},
            status=422,
            words=("file",),
        ),
        Upload("JSON instead of multipart", request={"json": {"file": "aGVsbG8="}}, status=422, words=("file",)),
        Upload(
            "multipart without a boundary",
            request={"content": b"--x\r\n\r\n", "headers": {"Content-Type": "multipart/form-data"}},
            status=400,
            words=("boundary",),
        ),
        Upload(
            "multipart cut short",
            request={
                "content": multipart("cut", [("file", "x.png", png)])[: len(png) // 2],
                "headers": {"Content-Type": "multipart/form-data; boundary=cut"},
            },
            status=422,
            words=("file",),
        ),
        Upload("empty file name", png, "", 422, ("file",)),
        Upload(
            "models: not an id",
            png,
            request={"form": {"models": "1;DROP TABLE verdicts"}},
            status=422,
            words=("models",),
        ),
        Upload("models: unknown id", png, request={"form": {"models": "424242"}}, status=422, words=("unknown model",)),
        Upload(
            "models: id beyond any integer column",
            png,
            request={"form": {"models": str(2**70)}},
            status=422,
            words=("unknown model",),
        ),
        # ------------------------------------------------------- valid but unusual: predicted
        Upload("16-bit greyscale PNG", encode(Image.fromarray(g.astype(np.uint16) * 257), "PNG"), film=g),
        Upload("RGBA PNG with a transparent band", encode(Image.fromarray(rgba, "RGBA"), "PNG"), film=with_band),
        Upload("palette PNG", encode(palette, "PNG"), film=g),
        Upload("grey + alpha PNG", encode(Image.fromarray(g).convert("LA"), "PNG"), film=g),
        Upload(
            "CMYK JPEG", encode(gray.convert("CMYK"), "JPEG", quality=95), "x.jpg", film=g, tolerance=8, reference=False
        ),
        Upload(
            "progressive JPEG",
            encode(gray, "JPEG", quality=95, progressive=True),
            "x.jpg",
            film=g,
            tolerance=8,
            reference=False,
        ),
        Upload(
            "JPEG rotated by EXIF orientation 6",
            jpeg_with_orientation(gray.rotate(90, expand=True), 6),
            "x.jpg",
            film=g,
            tolerance=8,
            reference=False,
        ),
        Upload("DICOM MONOCHROME1, 16-bit", dicom(mono1, photometric="MONOCHROME1"), "x.dcm", film=g),
        Upload(
            "CT-like multi-frame DICOM (first frame is used)",
            dicom(
                ct_frames,
                modality="CT",
                sop_class=CTImageStorage,
                RescaleSlope=1,
                RescaleIntercept=0,
                WindowCenter=-3.5,
                WindowWidth=2041,
            ),
            "ct.dcm",
            film=g,
        ),
        Upload("RGB DICOM", dicom(np.dstack([g, g, g]), photometric="RGB"), "x.dcm", film=g),
        Upload("PNG sent as image/svg+xml", png, request={"content_type": "image/svg+xml"}, film=g),
        # ------------------------------------------------------------------------ file names
        Upload(
            "unicode file name", png + b"u", "胸部X線_Ünïcödé_😷.png", film=g, stored_filename="胸部X線_Ünïcödé_😷.png"
        ),
        Upload(
            "path traversal file name", png + b"t", "../../../../etc/passwd.png", film=g, stored_filename="passwd.png"
        ),
        Upload(
            "Windows path traversal", png + b"w", "..\\..\\Windows\\win.ini.png", film=g, stored_filename="win.ini.png"
        ),
        Upload("absolute path file name", png + b"a", "/var/lib/cxr/x.png", film=g, stored_filename="x.png"),
        Upload(
            "control characters in file name",
            request=raw_file_part(b"a\x00b\tc\x1b[31m\x7f.png", png + b"c"),
            film=g,
            stored_filename="abc[31m.png",
        ),
        Upload("1000-character file name", png + b"l", "n" * 996 + ".png", film=g),
        Upload("HTML in file name", png + b"h", "<img src=x onerror=alert(1)>.png", film=g),
    ]
