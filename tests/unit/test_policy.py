"""policy.decide: pict-rs's output rules (src/formats.rs) plus our two documented
deviations."""

from __future__ import annotations

import msgspec
import pytest

from pictrs_trio.config import Animation, Image, ImageQuality, Magick, Media, Video, VideoQuality
from pictrs_trio.rules.errors import ErrorCode, ValidationError
from pictrs_trio.rules.formats import Fmt, Kind, MediaFormat
from pictrs_trio.rules.policy import Discovery, crf_for, decide
from pictrs_trio.rules.validate import UploadLimits, validate


def image(fmt: Fmt, orientation: int | None = None) -> Discovery:
    return Discovery(
        format=MediaFormat(kind=Kind.IMAGE, fmt=fmt), width=800, height=600, frames=None,
        orientation=orientation,
    )  # fmt: skip


def animation(fmt: Fmt) -> Discovery:
    return Discovery(format=MediaFormat(kind=Kind.ANIMATION, fmt=fmt), width=8, height=8, frames=5)


def video(
    fmt: Fmt, codec: str, audio: str | None = None, size: tuple[int, int] = (1280, 720)
) -> Discovery:
    return Discovery(
        format=MediaFormat(kind=Kind.VIDEO, fmt=fmt), width=size[0], height=size[1], frames=30,
        video_codec=codec, audio_codec=audio,
    )  # fmt: skip


def media(**sections: object) -> Media:
    return msgspec.structs.replace(Media(), **sections)


@pytest.mark.parametrize("orientation", [None, 1])
def test_upright_image_is_only_stripped(orientation: int | None) -> None:
    plan = decide(image(Fmt.JPEG, orientation), Media())
    assert plan.action == "strip"
    assert plan.output == MediaFormat(kind=Kind.IMAGE, fmt=Fmt.JPEG)


@pytest.mark.parametrize("orientation", [2, 3, 6, 8])
def test_rotated_image_is_reencoded_with_autorot(orientation: int) -> None:
    plan = decide(image(Fmt.JPEG, orientation), Media())
    assert (plan.action, plan.autorot, plan.output.fmt) == ("convert", True, Fmt.JPEG)


def test_configured_image_format_converts_with_clamped_quality() -> None:
    cfg = media(image=Image(format="webp", quality=ImageQuality(webp=250, jpeg=10)))
    plan = decide(image(Fmt.PNG), cfg)
    assert (plan.action, plan.output.fmt, plan.quality) == ("convert", Fmt.WEBP, 100)
    same = decide(image(Fmt.WEBP), cfg)
    assert same.action == "strip"
    assert same.quality is None


def test_animation_rules() -> None:
    assert decide(animation(Fmt.GIF), Media()).action == "strip"
    cfg = media(animation=Animation(format="webp"))
    plan = decide(animation(Fmt.GIF), cfg)
    assert (plan.action, plan.output) == ("convert", MediaFormat(kind=Kind.ANIMATION, fmt=Fmt.WEBP))
    assert decide(animation(Fmt.WEBP), cfg).action == "strip"


def test_video_copy_mode_drops_audio_unless_allowed() -> None:
    d = video(Fmt.MP4, "h264", "aac")
    plan = decide(d, Media())
    assert (plan.action, plan.output.fmt, plan.video_codec, plan.keep_audio) == (
        "video", Fmt.MP4, None, False,
    )  # fmt: skip
    allowed = decide(d, media(video=Video(allow_audio=True)))
    assert (allowed.keep_audio, allowed.audio_codec) == (True, None)


def test_video_transcode_table() -> None:
    allow = {"allow_audio": True}
    vp9 = decide(video(Fmt.MP4, "h264", "aac"), media(video=Video(video_codec="vp9", **allow)))
    assert (vp9.output.fmt, vp9.video_codec, vp9.audio_codec) == (Fmt.WEBM, "vp9", "opus")
    assert vp9.crf == 32
    same = decide(video(Fmt.WEBM, "vp9", "vorbis"), media(video=Video(video_codec="vp9", **allow)))
    assert (same.video_codec, same.crf, same.audio_codec) == (None, None, None)
    vorbis = Video(video_codec="vp9", audio_codec="vorbis", **allow)
    assert decide(video(Fmt.WEBM, "vp9", "opus"), media(video=vorbis)).audio_codec == "vorbis"
    av1 = decide(video(Fmt.MP4, "av1"), media(video=Video(video_codec="av1")))
    assert (av1.output.fmt, av1.video_codec) == (Fmt.WEBM, None)  # MP4/AV1 only re-muxed
    h264 = decide(video(Fmt.WEBM, "vp8", "opus"), media(video=Video(video_codec="h264", **allow)))
    assert (h264.output.fmt, h264.video_codec, h264.audio_codec) == (Fmt.MP4, "h264", "aac")
    h265 = decide(video(Fmt.MP4, "hevc", "aac"), media(video=Video(video_codec="h265", **allow)))
    assert (h265.video_codec, h265.audio_codec) == (None, None)
    muted = decide(video(Fmt.MP4, "h264", "aac"), media(video=Video(video_codec="vp9")))
    assert (muted.keep_audio, muted.audio_codec) == (False, None)


@pytest.mark.parametrize(
    ("size", "quality", "expected"),
    [
        ((1280, 720), VideoQuality(), 32),
        ((1280, 720), VideoQuality(crf_720=20, crf_1080=25), 20),
        ((1920, 1080), VideoQuality(crf_720=20, crf_2160=40), 40),
        ((320, 200), VideoQuality(crf_360=28), 28),
        ((4000, 3000), VideoQuality(crf_2160=10, crf_max=50), 50),
        ((100, 100), VideoQuality(crf_max=99), 63),
    ],
)
def test_crf_selection(size: tuple[int, int], quality: VideoQuality, expected: int) -> None:
    assert crf_for(*size, quality) == expected


def test_the_engine_limits_bound_images_and_animations_not_videos() -> None:
    # an 800x600 image under generous image limits; the engine's (magick) limits decide
    roomy = Image(max_width=20_000, max_height=20_000, max_area=100_000_000)
    low = media(image=roomy, magick=Magick(max_width=10_000, max_height=500))
    with pytest.raises(ValidationError, match="Height 600 is larger than the limit 500") as info:
        validate(image(Fmt.PNG), 10, UploadLimits(), low)
    assert info.value.code is ErrorCode.VALIDATE_HEIGHT
    narrow = media(image=roomy, magick=Magick(max_width=700, max_height=10_000))
    with pytest.raises(ValidationError, match="Width 800 is larger than the limit 700") as info:
        validate(image(Fmt.PNG), 10, UploadLimits(), narrow)
    assert info.value.code is ErrorCode.VALIDATE_WIDTH
    validate(
        image(Fmt.PNG), 10, UploadLimits(), media(magick=Magick(max_width=800, max_height=600))
    )
    # ffmpeg decodes videos: the engine's limits do not apply to them
    validate(video(Fmt.MP4, "h264", size=(800, 600)), 10, UploadLimits(), narrow)
