"""Media formats: what we recognise, what we store, and how each maps to names and bytes.

Pure: no I/O. ``sniff`` looks only at the first bytes of a file; the real decoders then load
with the loader that matches the sniffed type and nothing else (never a generic loader on
untrusted input).
"""

from __future__ import annotations

import enum

import msgspec


class Kind(enum.StrEnum):
    """The media category clients see in details' ``format``."""

    IMAGE = "Image"
    ANIMATION = "Animation"
    VIDEO = "Video"


class Fmt(enum.StrEnum):
    """A concrete container format we can store."""

    JPEG = "jpeg"
    PNG = "png"
    WEBP = "webp"
    AVIF = "avif"
    JXL = "jxl"
    APNG = "apng"
    GIF = "gif"
    MP4 = "mp4"
    WEBM = "webm"


class MediaFormat(msgspec.Struct, frozen=True, kw_only=True):
    """Category + concrete format, e.g. (Animation, webp). Stored in details."""

    kind: Kind
    fmt: Fmt

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.fmt]

    @property
    def extension(self) -> str:
        """File extension with the dot, as used in aliases: ``.jpeg``, never ``.jpg``."""
        return "." + self.fmt.value

    @property
    def hash_byte(self) -> int:
        """pict-rs's format byte, the last byte of the 39-byte hash key."""
        return _HASH_BYTES[(self.kind, self.fmt)]


CONTENT_TYPES: dict[Fmt, str] = {
    Fmt.JPEG: "image/jpeg",
    Fmt.PNG: "image/png",
    Fmt.WEBP: "image/webp",
    Fmt.AVIF: "image/avif",
    Fmt.JXL: "image/jxl",
    Fmt.APNG: "image/apng",
    Fmt.GIF: "image/gif",
    Fmt.MP4: "video/mp4",
    Fmt.WEBM: "video/webm",
}

_HASH_BYTES: dict[tuple[Kind, Fmt], int] = {
    (Kind.ANIMATION, Fmt.APNG): 0,
    (Kind.ANIMATION, Fmt.AVIF): 1,
    (Kind.ANIMATION, Fmt.GIF): 2,
    (Kind.ANIMATION, Fmt.WEBP): 3,
    (Kind.IMAGE, Fmt.AVIF): 4,
    (Kind.IMAGE, Fmt.JPEG): 5,
    (Kind.IMAGE, Fmt.JXL): 6,
    (Kind.IMAGE, Fmt.PNG): 7,
    (Kind.IMAGE, Fmt.WEBP): 8,
    (Kind.VIDEO, Fmt.MP4): 9,
    (Kind.VIDEO, Fmt.WEBM): 10,
}

FORMAT_FROM_HASH_BYTE: dict[int, MediaFormat] = {
    b: MediaFormat(kind=k, fmt=f) for (k, f), b in _HASH_BYTES.items()
}


class Sniffed(enum.StrEnum):
    """What the first bytes say a file is. Only the first nine are accepted inputs."""

    JPEG = "jpeg"
    PNG = "png"  # PNG or APNG: the acTL chunk decides, see media.discover
    GIF = "gif"
    WEBP = "webp"  # still or animated: the VP8X animation flag decides
    AVIF = "avif"  # ISO-BMFF with an avif/avis brand
    JXL = "jxl"  # codestream or ISO-BMFF container
    MP4 = "mp4"  # ISO-BMFF video (mp4, mov, m4v ...)
    WEBM = "webm"  # EBML (webm, mkv)
    # recognised so the error can name them, never decoded
    HEIC = "heic"
    TIFF = "tiff"
    BMP = "bmp"
    SVG = "svg"
    PDF = "pdf"
    ICO = "ico"
    UNKNOWN = "unknown"


ACCEPTED: frozenset[Sniffed] = frozenset(
    {
        Sniffed.JPEG,
        Sniffed.PNG,
        Sniffed.GIF,
        Sniffed.WEBP,
        Sniffed.AVIF,
        Sniffed.JXL,
        Sniffed.MP4,
        Sniffed.WEBM,
    }
)

SNIFF_BYTES = 64

_AVIF_BRANDS = {b"avif", b"avis"}
_HEIC_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}


def sniff(head: bytes) -> Sniffed:
    """Classify a file by its first bytes (``SNIFF_BYTES`` is enough)."""
    if head.startswith(b"\xff\xd8\xff"):
        return Sniffed.JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Sniffed.PNG
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return Sniffed.GIF
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return Sniffed.WEBP
    if head.startswith(b"\xff\x0a") or head.startswith(b"\x00\x00\x00\x0cJXL \r\n\x87\n"):
        return Sniffed.JXL
    if head[4:8] == b"ftyp":
        return _sniff_ftyp(head)
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return Sniffed.WEBM
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return Sniffed.TIFF
    if head.startswith(b"BM"):
        return Sniffed.BMP
    if head.startswith(b"%PDF"):
        return Sniffed.PDF
    if head.startswith(b"\x00\x00\x01\x00"):
        return Sniffed.ICO
    text = head.lstrip().lower()
    if text.startswith((b"<?xml", b"<svg", b"<!doctype svg")):
        return Sniffed.SVG
    return Sniffed.UNKNOWN


def _sniff_ftyp(head: bytes) -> Sniffed:
    box_size = int.from_bytes(head[0:4], "big")
    major = head[8:12]
    end = min(max(box_size, 16), len(head))
    compatible = {head[i : i + 4] for i in range(16, end - 3, 4)}
    brands = {major} | compatible
    if major in _AVIF_BRANDS or (major in {b"mif1", b"msf1"} and brands & _AVIF_BRANDS):
        return Sniffed.AVIF
    if brands & _HEIC_BRANDS and not brands & _AVIF_BRANDS:
        return Sniffed.HEIC
    if brands & _AVIF_BRANDS:
        return Sniffed.AVIF
    return Sniffed.MP4


# Output formats accepted in media.image.format / media.animation.format
IMAGE_OUTPUTS: frozenset[Fmt] = frozenset({Fmt.AVIF, Fmt.PNG, Fmt.JPEG, Fmt.JXL, Fmt.WEBP})
ANIMATION_OUTPUTS: frozenset[Fmt] = frozenset({Fmt.APNG, Fmt.AVIF, Fmt.GIF, Fmt.WEBP})
