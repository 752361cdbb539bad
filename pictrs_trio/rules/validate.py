"""Upload limits: the per-request query limits and the per-category configured limits.

Pure. The checks, their order and strict "greater than" comparisons are pict-rs's
(pict-rs ``src/ingest/validate.rs``).
"""

from __future__ import annotations

import msgspec

from pictrs_trio.config import Media
from pictrs_trio.rules.errors import (
    ErrorCode,
    FileTooLarge,
    MediaDisallowed,
    ValidationError,
    VideoDisabled,
)
from pictrs_trio.rules.formats import Kind
from pictrs_trio.rules.policy import Discovery

MIB = 1024 * 1024


class UploadLimits(msgspec.Struct, frozen=True, kw_only=True):
    """The limit keys a client may put on an upload's query string (pict-rs 0.5.11)."""

    max_width: int | None = None
    max_height: int | None = None
    max_area: int | None = None
    max_frame_count: int | None = None
    max_file_size: int | None = None  # MiB
    allow_image: bool = True
    allow_animation: bool = True
    allow_video: bool = True

    def byte_cap(self, media: Media) -> int:
        """The most bytes one file may have before anything is known about it."""
        mb = media.max_file_size
        if self.max_file_size is not None:
            mb = min(mb, self.max_file_size)
        return mb * MIB


def _check(value: int, limit: int | None, code: ErrorCode, what: str) -> None:
    if limit is not None and value > limit:
        raise ValidationError(f"{what} {value} is larger than the limit {limit}", code=code)


def validate(d: Discovery, size: int, limits: UploadLimits, media: Media) -> None:
    """Raise the first limit ``d`` breaks; return None when the upload is acceptable."""
    w, h, frames = d.width, d.height, d.frames
    # per-request limits
    _check(w, limits.max_width, ErrorCode.VALIDATE_WIDTH, "Width")
    _check(h, limits.max_height, ErrorCode.VALIDATE_HEIGHT, "Height")
    if frames is not None:
        _check(frames, limits.max_frame_count, ErrorCode.VALIDATE_FRAMES, "Frame count")
    _check(w * h, limits.max_area, ErrorCode.VALIDATE_AREA, "Area")
    if limits.max_file_size is not None and size > limits.max_file_size * MIB:
        raise FileTooLarge(f"File size {size} is larger than {limits.max_file_size} MB")

    kind = d.format.kind
    allowed = {
        Kind.IMAGE: limits.allow_image,
        Kind.ANIMATION: limits.allow_animation,
        Kind.VIDEO: limits.allow_video,
    }[kind]
    if not allowed:
        raise MediaDisallowed(f"{kind.value} uploads are not allowed for this request")

    if kind is Kind.IMAGE:
        cfg_i = media.image
        _check(w, cfg_i.max_width, ErrorCode.VALIDATE_WIDTH, "Width")
        _check(h, cfg_i.max_height, ErrorCode.VALIDATE_HEIGHT, "Height")
        _check(w * h, cfg_i.max_area, ErrorCode.VALIDATE_AREA, "Area")
        max_mb = cfg_i.max_file_size
    elif kind is Kind.ANIMATION:
        cfg_a = media.animation
        _check(w, cfg_a.max_width, ErrorCode.VALIDATE_WIDTH, "Width")
        _check(h, cfg_a.max_height, ErrorCode.VALIDATE_HEIGHT, "Height")
        _check(w * h, cfg_a.max_area, ErrorCode.VALIDATE_AREA, "Area")
        _check(frames or 1, cfg_a.max_frame_count, ErrorCode.VALIDATE_FRAMES, "Frame count")
        max_mb = cfg_a.max_file_size
    else:
        cfg_v = media.video
        if not cfg_v.enable:
            raise VideoDisabled("Video uploads are disabled")
        _check(w, cfg_v.max_width, ErrorCode.VALIDATE_WIDTH, "Width")
        _check(h, cfg_v.max_height, ErrorCode.VALIDATE_HEIGHT, "Height")
        _check(w * h, cfg_v.max_area, ErrorCode.VALIDATE_AREA, "Area")
        _check(frames or 1, cfg_v.max_frame_count, ErrorCode.VALIDATE_FRAMES, "Frame count")
        max_mb = cfg_v.max_file_size
    if size > max_mb * MIB:
        raise FileTooLarge(f"File size {size} is larger than {max_mb} MB")
    if kind is not Kind.VIDEO:
        # The engine decodes nothing larger (media.tools.engine_limits); say so as a
        # validation error rather than fail later in the engine.
        _check(w, media.magick.max_width, ErrorCode.VALIDATE_WIDTH, "Width")
        _check(h, media.magick.max_height, ErrorCode.VALIDATE_HEIGHT, "Height")
