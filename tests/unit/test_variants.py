"""Operation parsing, variant keys, output formats and geometry (pictrs_trio.rules.variants)."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pictrs_trio.config import DEFAULT_FILTERS, Animation, AnimationQuality, Image, Media
from pictrs_trio.config import ImageQuality as IQ
from pictrs_trio.rules.errors import InvalidFileExtension, InvalidProcessPath, status_of
from pictrs_trio.rules.formats import Fmt, Kind, MediaFormat
from pictrs_trio.rules.variants import (
    Blur,
    BlurBy,
    Crop,
    CropBox,
    Identity,
    Op,
    Resize,
    ScaleTo,
    Thumbnail,
    area_size,
    crop_box,
    final_size,
    fit_size,
    load_reduction,
    needs_still,
    output_format,
    parse_ext,
    parse_operations,
    plan,
    quality_for,
    render_float,
    variant_key,
)


def key(query: str, ext: str = "webp", allowed: tuple[str, ...] | None = DEFAULT_FILTERS) -> str:
    pairs = [tuple(p.split("=", 1)) for p in query.split("&") if p]
    return variant_key(parse_operations(pairs, allowed=allowed), parse_ext(ext))  # type: ignore[arg-type]


def test_spec_examples() -> None:
    assert key("src=a.png&thumbnail=256&blur=3.0", "jpg") == "thumbnail/256/blur/3/jpeg"
    assert key("src=a.png&resize=Mitchell.200") == "resize/Mitchell.200/webp"
    assert key("src=a.png", "png") == "png"
    assert key("src=a.png&identity=true", "png") == "png"
    assert key("src=a.png&resize=.a10000&crop=1x1") == "resize/.a10000/crop/1x1/webp"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("resize=200", "resize/200"),
        ("resize=+0200", "resize/200"),
        ("resize=mitchell.200", "resize/Mitchell.200"),
        ("resize=LANCZOS2SHARP.a500", "resize/Lanczos2Sharp.a500"),
        ("resize=Lanczos2.200", "resize/Lanczos2.200"),  # explicit default stays in the key
        ("resize=foo.200", "resize/200"),  # unknown filter: default, no name in the key
        ("resize=.200", "resize/200"),
        ("resize=200.5", "resize/5"),  # "200" is an unknown filter name
        ("resize=foo.a200", "resize/.a200"),
        ("resize=.aa300", "resize/.a300"),  # pict-rs strips every leading 'a'
        ("thumbnail=+7", "thumbnail/7"),
        ("crop=16x9x5", "crop/16x9"),
        ("crop=16x9xjunk", "crop/16x9"),
        ("crop=01x020", "crop/1x20"),
        ("blur=3.0", "blur/3"),
        ("blur=0.50", "blur/0.5"),
        ("blur=1e2", "blur/100"),
        ("blur=+.25", "blur/0.25"),
        ("blur=1e-7", "blur/0.0000001"),
        ("blur=0.1", "blur/0.1"),
        ("blur=0", "blur/0"),
        ("Thumbnail=10&BLUR=1", "thumbnail/10/blur/1"),  # keys are lower-cased
        ("identity=x&thumbnail=5&thumbnail=6", "thumbnail/5/thumbnail/6"),
    ],
)
def test_canonical_keys(query: str, expected: str) -> None:
    assert key(query) == f"{expected}/webp"


@pytest.mark.parametrize(
    "query",
    [
        "resize=a100",  # the area form needs the dot
        "resize=.a",
        "resize=Mitchell.",
        "resize=-5",
        "resize= 5",
        "resize=5_0",
        "resize=٣",  # non-ASCII digit: Rust refuses, Python's int() would not
        "thumbnail=",
        "thumbnail=0",
        "thumbnail=65536",
        "thumbnail=" + "9" * 5000,
        "resize=.a4294836226",  # 65535**2 + 1
        "crop=16",
        "crop=0x9",
        "crop=21x9",
        "crop=16X9",
        "blur=nan",
        "blur=inf",
        "blur=-1",
        "blur=-0",
        "blur=100.5",
        "blur=1e400",
        "blur=1_0",
        "blur= 1",
        "blur=0x10",
        "blur=.",
    ],
)
def test_invalid_values(query: str) -> None:
    with pytest.raises(InvalidProcessPath) as info:
        key(query)
    assert (status_of(info.value), str(info.value.code)) == (400, "invalid-process-path")


def test_limits_are_inclusive() -> None:
    assert key("thumbnail=65535&resize=.a4294836225&blur=100") == (
        "thumbnail/65535/resize/.a4294836225/blur/100/webp"
    )
    assert key("thumbnail=0000000000000000000000000000005") == "thumbnail/5/webp"


def test_filtering_by_allowed() -> None:
    # not allowed (or a source key): dropped silently, even when the value is nonsense
    assert key("src=x&alias=y&proxy=z&blur=junk&thumbnail=5", allowed=("thumbnail",)) == (
        "thumbnail/5/webp"
    )
    assert key("foo=bar&thumbnail=5") == "thumbnail/5/webp"
    # a kept key that is not an operation fails the whole request
    with pytest.raises(InvalidProcessPath):
        key("foo=bar", allowed=("foo",))
    # upload preprocessing: no filtering, every key must be an operation
    assert key("crop=16x9&resize=1200&blur=0.2", allowed=None) == (
        "crop/16x9/resize/1200/blur/0.2/webp"
    )
    with pytest.raises(InvalidProcessPath):
        key("src=a.png&thumbnail=5", allowed=None)


def test_ops_are_typed_and_travel() -> None:
    pairs = [("thumbnail", "9"), ("resize", "foo.a20"), ("crop", "3x4"), ("blur", "1.5")]
    ops = parse_operations(pairs, allowed=None)
    assert ops == [
        Thumbnail(size=9),
        Resize(filter=None, size=20, area=True),
        Crop(w=3, h=4),
        Blur(sigma=1.5),
    ]
    wire = msgspec.msgpack.encode(ops)
    assert msgspec.msgpack.decode(wire, type=list[Op]) == ops
    assert Resize(size=1).kernel == "lanczos2"
    assert Resize(filter="RobidouxSharp", size=1).kernel == "mitchell"


def test_parse_ext() -> None:
    assert parse_ext("jpg") is Fmt.JPEG
    assert {parse_ext(e) for e in ("apng", "avif", "gif", "jpeg", "jxl", "png", "webp")} == {
        Fmt.APNG, Fmt.AVIF, Fmt.GIF, Fmt.JPEG, Fmt.JXL, Fmt.PNG, Fmt.WEBP,
    }  # fmt: skip
    for bad in ("mp4", "webm", "bmp", "", "PNG", "png "):
        with pytest.raises(InvalidFileExtension) as info:
            parse_ext(bad)
        assert status_of(info.value) == 400


IMG, ANI, VID = Kind.IMAGE, Kind.ANIMATION, Kind.VIDEO


def test_output_format_table() -> None:
    table = {
        # ext: (from a still, from an animation)
        Fmt.AVIF: (IMG, ANI),
        Fmt.WEBP: (IMG, ANI),
        Fmt.JPEG: (IMG, IMG),
        Fmt.JXL: (IMG, IMG),
        Fmt.PNG: (IMG, IMG),
        Fmt.APNG: (ANI, ANI),
        Fmt.GIF: (ANI, ANI),
    }
    for ext, (still, animated) in table.items():
        assert output_format(IMG, ext) == MediaFormat(kind=still, fmt=ext)
        assert output_format(VID, ext) == MediaFormat(kind=still, fmt=ext)
        assert output_format(ANI, ext) == MediaFormat(kind=animated, fmt=ext)


def test_needs_still() -> None:
    mp4, gif = MediaFormat(kind=VID, fmt=Fmt.MP4), MediaFormat(kind=ANI, fmt=Fmt.GIF)
    png = MediaFormat(kind=IMG, fmt=Fmt.PNG)
    assert all(needs_still(mp4, e) for e in Fmt if e not in (Fmt.MP4, Fmt.WEBM))
    assert [e for e in (Fmt.JPEG, Fmt.PNG, Fmt.JXL, Fmt.WEBP, Fmt.GIF) if needs_still(gif, e)] == [
        Fmt.JPEG, Fmt.PNG, Fmt.JXL,
    ]  # fmt: skip
    assert not any(needs_still(png, e) for e in Fmt)


def test_quality_for() -> None:
    media = Media(
        image=Image(quality=IQ(webp=70, jpeg=90)),
        animation=Animation(quality=AnimationQuality(webp=40)),
    )
    assert quality_for(media, MediaFormat(kind=IMG, fmt=Fmt.WEBP)) == 70
    assert quality_for(media, MediaFormat(kind=ANI, fmt=Fmt.WEBP)) == 40
    assert quality_for(media, MediaFormat(kind=ANI, fmt=Fmt.GIF)) is None
    assert quality_for(media, MediaFormat(kind=IMG, fmt=Fmt.PNG)) is None


def test_render_float_like_rust() -> None:
    cases = {3.0: "3", 0.5: "0.5", 100.0: "100", 1e21: "1000000000000000000000",
             1e-7: "0.0000001", 0.1 + 0.2: "0.30000000000000004", 12.25: "12.25"}  # fmt: skip
    for value, text in cases.items():
        assert render_float(value) == text


# ----------------------------------------------------------------------------- geometry


def test_fit_size_matches_imagemagick() -> None:
    # values checked against ImageMagick 6.9 `convert -sample/-resize 'NxN>'`
    assert fit_size(1200, 1387, 256) == (221, 256)  # 221.485 rounds down
    assert fit_size(1200, 1387, 200) == (173, 200)
    assert fit_size(550, 368, 256) == (256, 171)
    assert fit_size(640, 360, 256) == (256, 144)
    assert fit_size(1200, 1387, 5000) == (1200, 1387)  # never enlarges
    assert fit_size(256, 100, 256) == (256, 100)
    assert fit_size(10000, 1, 10) == (10, 1)


def test_area_size_matches_imagemagick() -> None:
    # `convert -resize '10000@>'`: sides truncated, not rounded
    assert area_size(1200, 1387, 10000) == (93, 107)
    assert area_size(640, 360, 10000) == (133, 75)
    assert area_size(550, 368, 10000) == (122, 81)
    assert area_size(100, 100, 10000) == (100, 100)


def test_crop_box() -> None:
    assert crop_box(1200, 1387, 16, 9) == CropBox(left=0, top=356, width=1200, height=675)
    assert crop_box(640, 360, 16, 9) == CropBox(left=0, top=0, width=640, height=360)
    assert crop_box(4000, 3000, 1, 1) == CropBox(left=500, top=0, width=3000, height=3000)
    assert crop_box(1, 1000, 20, 1) == CropBox(left=0, top=500, width=1, height=1)


def test_plan_and_reduction() -> None:
    ops = parse_operations([("crop", "1x1"), ("thumbnail", "256")], allowed=None)
    steps = plan(4000, 3000, ops)
    assert steps == [
        CropBox(left=500, top=0, width=3000, height=3000),
        ScaleTo(width=256, height=256, kernel="nearest"),
    ]
    assert load_reduction(4000, 3000, steps) == pytest.approx(3000 / 256)
    resize = plan(4000, 3000, [Resize(size=256)])
    assert load_reduction(4000, 3000, resize) == pytest.approx(4000 / 256 / 2)  # kernel margin
    blur_first = plan(4000, 3000, [Blur(sigma=2), Thumbnail(size=10)])
    assert isinstance(blur_first[0], BlurBy)
    assert load_reduction(4000, 3000, blur_first) == 1.0
    assert plan(100, 100, [Thumbnail(size=500), Identity(), Blur(sigma=0)]) == []
    assert final_size(4000, 3000, steps) == (256, 256)


# ----------------------------------------------------------------------------- properties

op_values = {
    "thumbnail": st.integers(1, 70000).map(str),
    "resize": st.one_of(
        st.integers(1, 70000).map(str),
        st.tuples(
            st.sampled_from(["lanczos", "MITCHELL", "Lanczos2", "foo", ""]),
            st.sampled_from(["", "a"]),
            st.integers(1, 10**6),
        ).map(lambda t: f"{t[0]}.{t[1]}{t[2]}"),
    ),
    "crop": st.tuples(st.integers(1, 20), st.integers(1, 20)).map(lambda t: f"{t[0]}x{t[1]}"),
    "blur": st.floats(0, 100).map(repr),
}
pair = st.sampled_from(sorted(op_values)).flatmap(
    lambda k: st.tuples(st.sampled_from([k, k.upper(), k.title()]), op_values[k])
)


def _noise(value: str, data: st.DataObject) -> str:
    """An equivalent spelling: a leading '+' or zeros on integers."""
    if value.isdigit():
        return data.draw(st.sampled_from(["", "+", "0", "+00"])) + value
    return value


@given(st.lists(pair, max_size=6), st.data())
def test_key_is_canonical(pairs: list[tuple[str, str]], data: st.DataObject) -> None:
    try:
        ops = parse_operations(pairs, allowed=None)
    except InvalidProcessPath:
        return
    first = variant_key(ops, Fmt.WEBP)
    # re-parsing the key's own segments gives the same key (it is canonical) ...
    segments = first.split("/")[:-1]
    again = parse_operations(list(zip(segments[::2], segments[1::2], strict=True)), allowed=None)
    assert variant_key(again, Fmt.WEBP) == first
    # ... and so does an equivalent spelling of the query
    noisy = [(k.swapcase(), _noise(v, data)) for k, v in pairs]
    assert variant_key(parse_operations(noisy, allowed=None), Fmt.WEBP) == first


@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=30)), max_size=6))
def test_random_queries_only_raise_invalid_process_path(pairs: list[tuple[str, str]]) -> None:
    for allowed in (None, DEFAULT_FILTERS):
        try:
            ops = parse_operations(pairs, allowed=allowed)
        except InvalidProcessPath:
            continue
        variant_key(ops, Fmt.PNG)
        for op in ops:
            if isinstance(op, Blur):
                assert math.isfinite(op.sigma) and 0 <= op.sigma <= 100


@given(
    st.integers(1, 9000),
    st.integers(1, 9000),
    st.lists(
        st.one_of(
            st.builds(Thumbnail, size=st.integers(1, 9000)),
            st.builds(Resize, size=st.integers(1, 9000)),
            st.builds(Resize, size=st.integers(1, 10**8), area=st.just(True)),
            st.builds(Crop, w=st.integers(1, 20), h=st.integers(1, 20)),
        ),
        max_size=4,
    ),
)
def test_geometry_never_grows(width: int, height: int, ops: list[Op]) -> None:
    w, h = width, height
    for step in plan(width, height, ops):
        if isinstance(step, CropBox):
            assert step.left >= 0 and step.left + step.width <= w
            assert step.top >= 0 and step.top + step.height <= h
        if isinstance(step, CropBox | ScaleTo):
            assert 1 <= step.width <= w and 1 <= step.height <= h
            w, h = step.width, step.height
    assert load_reduction(width, height, plan(width, height, ops)) >= 1.0
