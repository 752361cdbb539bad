"""``MediaTools``: the one object ingest (and later processing) uses for native media work.

``open_media_tools`` starts the supervised helpers (one exiftool ``-stay_open`` process, started
on demand and stopped when idle; the engine worker pool) in its own nursery and stops them on
exit: every child killed and reaped.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import trio

from pictrs_trio.config import Magick, Media
from pictrs_trio.media import discover as discovery
from pictrs_trio.media.exiftool import ExifTool
from pictrs_trio.media.ffmpeg import (
    animation_argv,
    cjxl_argv,
    djxl_argv,
    lossless_webp_argv,
    still_argv,
    video_argv,
)
from pictrs_trio.media.protocol import (
    Blurhash,
    BlurhashResult,
    EngineLimits,
    Render,
    RenderResult,
    Reply,
    Request,
)
from pictrs_trio.media.run import run_tool
from pictrs_trio.media.strip import strip_file
from pictrs_trio.media.vips import EnginePool
from pictrs_trio.metrics import Metrics
from pictrs_trio.rules.errors import MediaToolError
from pictrs_trio.rules.formats import Fmt, Kind, MediaFormat
from pictrs_trio.rules.policy import Discovery, Plan
from pictrs_trio.rules.variants import Op

# A maker of scratch files for one operation (``MediaTools.scratch``): suffix -> fresh path.
Temp = Callable[[str], Path]

# Every external program the media work calls, by name on PATH (media.md's tool chain; the
# libvips engine is the pyvips-binary wheel, not a program).
TOOLS = ("ffmpeg", "ffprobe", "exiftool", "cjxl", "djxl", "jxlinfo")
TOOL_PACKAGES = {
    "ffmpeg": "ffmpeg",
    "ffprobe": "ffmpeg",
    "exiftool": "libimage-exiftool-perl",
    "cjxl": "libjxl-tools",
    "djxl": "libjxl-tools",
    "jxlinfo": "libjxl-tools",
}


def missing_tools() -> list[str]:
    """The tools not found on PATH (``shutil.which``: a few stat calls each)."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


ENGINE_ANIMATIONS = frozenset({Fmt.GIF, Fmt.WEBP})  # what libvips reads and writes animated
FFMPEG_ANIMATION_INPUTS = frozenset({Fmt.GIF, Fmt.APNG, Fmt.AVIF})
# Engine work allowed on one animation: frames x width x height of the input.
ANIMATION_PIXEL_BUDGET = 200_000_000


class MediaTools:
    """Discovery, metadata stripping, conversion and video handling, all out of process."""

    def __init__(
        self,
        *,
        config: Media,
        tmp_dir: Path,
        engine: EnginePool,
        exiftool: ExifTool,
        limiter: trio.CapacityLimiter,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.tmp_dir = tmp_dir
        self.engine = engine
        self.exiftool = exiftool
        self.limiter = limiter
        self.metrics = metrics if metrics is not None else Metrics()

    async def run(self, argv: Sequence[str | Path], *, capture_stdout: bool = True) -> bytes:
        """``run_tool`` with this instance's timeout and limiter."""
        return await run_tool(
            argv,
            timeout=self.config.process_timeout,
            limiter=self.limiter,
            capture_stdout=capture_stdout,
            metrics=self.metrics,
        )

    async def submit(self, job: Request) -> Reply:
        """A job for the engine pool (see ``media.protocol`` for the kinds)."""
        return await self.engine.submit(job)

    def temp_path(self, suffix: str = "") -> Path:
        return self.tmp_dir / f"{uuid.uuid4().hex}{suffix}"

    @contextmanager
    def scratch(self) -> Iterator[Temp]:
        """Fresh paths in the temporary folder for one operation, all removed when the block
        ends, however it ends."""
        made: list[Path] = []

        def temp(suffix: str) -> Path:
            made.append(self.temp_path(suffix))
            return made[-1]

        try:
            yield temp
        finally:
            for path in made:
                path.unlink(missing_ok=True)

    async def discover(self, path: Path) -> Discovery:
        """What the file is. Raises UnsupportedMedia (400) or MediaToolError."""
        return await discovery.discover(path, engine=self.engine, run=self.run)

    async def strip(self, src: Path, dst: Path, fmt: MediaFormat) -> tuple[bytes, int] | None:
        """Lossless metadata removal for images and animations: JPEG, PNG, WebP and GIF
        in-process (``media.strip``; returns the SHA-256 and size of ``dst``), anything
        else, or any file of those whose structure is unusual, by exiftool ``-all=``
        (returns None)."""
        if fmt.kind is Kind.VIDEO:
            raise ValueError("videos are stripped by MediaTools.video")
        hashed = await trio.to_thread.run_sync(strip_file, src, dst, fmt.fmt)
        if hashed is None:
            await self.exiftool.strip(src, dst, fmt=fmt.fmt)
        return hashed

    async def convert(self, src: Path, dst: Path, *, source: Discovery, plan: Plan) -> Discovery:
        """Re-encode ``src`` to ``plan.output`` at ``dst`` (autorot, no metadata).

        Returns the discovery of the output. Raises UnsupportedMedia when the input does not
        decode, MediaToolError for conversions no tool here can do or tool failures.
        """
        with self.scratch() as temp:
            if plan.output.kind is Kind.ANIMATION:
                await self._convert_animation(src, dst, source=source, plan=plan)
            else:
                await self._convert_image(src, dst, source=source, plan=plan, temp=temp)
            return await self.discover(dst)

    async def _convert_image(
        self, src: Path, dst: Path, *, source: Discovery, plan: Plan, temp: Temp
    ) -> None:
        sniffed, autorot = source.format.fmt.value, plan.autorot
        if source.format.fmt is Fmt.APNG:
            sniffed = "png"  # the engine reads the default image of an APNG
        if source.format.fmt is Fmt.JXL:
            decoded = temp(".png")
            await self.run(djxl_argv(src, decoded), capture_stdout=False)
            src, sniffed, autorot = decoded, "png", False  # djxl already applied orientation
        out = plan.output.fmt
        target = temp(".png") if out is Fmt.JXL else dst
        await self.engine.submit(
            Render(  # a conversion: no operations, the first page of an animation
                src=os.fspath(src),
                sniffed=sniffed,
                dst=os.fspath(target),
                ops=[],
                out_fmt="png" if out is Fmt.JXL else out.value,
                quality=None if out is Fmt.JXL else plan.quality,
                autorot=autorot,
                strict=True,
                max_pixels=ANIMATION_PIXEL_BUDGET,
            )
        )
        if out is Fmt.JXL:
            await self.run(cjxl_argv(target, dst, plan.quality), capture_stdout=False)

    async def _convert_animation(
        self, src: Path, dst: Path, *, source: Discovery, plan: Plan
    ) -> None:
        src_fmt, out = source.format.fmt, plan.output.fmt
        if src_fmt in ENGINE_ANIMATIONS and out in ENGINE_ANIMATIONS:
            job = Render(
                src=os.fspath(src),
                sniffed=src_fmt.value,
                dst=os.fspath(dst),
                ops=[],
                out_fmt=out.value,
                quality=plan.quality,
                animated=True,
                strict=True,
                max_pixels=ANIMATION_PIXEL_BUDGET,
            )
            await self.engine.submit(job)
        elif src_fmt in FFMPEG_ANIMATION_INPUTS:
            argv = animation_argv(src, dst, src_fmt=src_fmt, out=out, quality=plan.quality)
            await self.run(argv, capture_stdout=False)
        else:
            raise MediaToolError(
                f"converting an animated {src_fmt.value} to {out.value} is not supported"
            )

    async def render(
        self,
        src: Path,
        dst: Path,
        *,
        source: Discovery,
        ops: Sequence[Op],
        output: MediaFormat,
        quality: int | None,
    ) -> Discovery:
        """Apply ``ops`` to ``src`` (described by ``source``) and write ``output`` to ``dst``.

        An animated ``source`` stays animated when ``output`` is an animation; a still output
        uses its first frame; a video source uses its first frame. Metadata is not kept.
        Returns the discovery of ``dst`` (a one-frame GIF is an Animation, as pict-rs
        records it). Raises UnsupportedMedia (400) when the input does not decode or is too
        much work, MediaToolError when a tool fails or times out.
        """
        with self.scratch() as temp:
            return await self._render(src, dst, source, ops, output, quality, temp)

    async def _render(
        self,
        src: Path,
        dst: Path,
        source: Discovery,
        ops: Sequence[Op],
        output: MediaFormat,
        quality: int | None,
        temp: Temp,
    ) -> Discovery:
        animated = source.format.kind is Kind.ANIMATION and output.kind is Kind.ANIMATION

        # 1. Input the engine can read.
        src, sniffed = await self._engine_input(src, source, animated=animated, temp=temp)

        # 2. Output the engine writes, then the tool that finishes it, if any.
        out = output.fmt
        finish: Sequence[str | Path] | None = None
        target = dst
        if out is Fmt.JXL:
            target = temp(".png")
            finish = cjxl_argv(target, dst, quality)
            engine_fmt, engine_quality = "png", None
        elif out is Fmt.AVIF and output.kind is Kind.ANIMATION:
            target = temp(".apng")
            finish = animation_argv(target, dst, src_fmt=Fmt.APNG, out=Fmt.AVIF, quality=quality)
            engine_fmt, engine_quality = "apng", None
        else:
            engine_fmt, engine_quality = out.value, quality
        reply = await self.engine.submit(
            Render(
                src=os.fspath(src),
                sniffed=sniffed,
                dst=os.fspath(target),
                ops=list(ops),
                out_fmt=engine_fmt,
                quality=engine_quality,
                animated=animated,
                max_pixels=ANIMATION_PIXEL_BUDGET,
            )
        )
        assert isinstance(reply, RenderResult)
        if finish is not None:
            await self.run(finish, capture_stdout=False)
            return await self.discover(dst)
        return _discovered(out, reply)

    async def _engine_input(
        self, src: Path, source: Discovery, *, animated: bool, temp: Temp
    ) -> tuple[Path, str]:
        """(path, sniffed type) of ``src`` as the engine can read it: a video's or a still
        AVIF sequence's first frame and a JPEG XL as PNG, an animation the engine cannot
        read animated as lossless WebP, an APNG's default image as PNG. New files come
        from ``temp``."""
        src_fmt = source.format.fmt

        if source.format.kind is Kind.VIDEO or (
            src_fmt is Fmt.AVIF and source.format.kind is Kind.ANIMATION and not animated
        ):
            still = temp(".png")  # ffmpeg reads AVIF sequences that libheif may not
            await self.run(still_argv(src, still, out=Fmt.PNG), capture_stdout=False)
            return still, "png"
        if src_fmt is Fmt.JXL:
            decoded = temp(".png")
            await self.run(djxl_argv(src, decoded), capture_stdout=False)
            return decoded, "png"
        if animated and src_fmt in (Fmt.APNG, Fmt.AVIF):
            webp = temp(".webp")
            await self.run(lossless_webp_argv(src, webp, src_fmt=src_fmt), capture_stdout=False)
            return webp, "webp"
        if src_fmt is Fmt.APNG:
            return src, "png"  # the engine reads the default image: the first frame
        return src, src_fmt.value

    async def blurhash(self, src: Path, *, source: Discovery) -> str:
        """The BlurHash of ``src``'s first frame (pict-rs ``src/blurhash.rs``; a video's
        first frame too, though callers pass its motion still, which is kept). Raises
        UnsupportedMedia when the input does not decode, MediaToolError when a tool fails."""
        with self.scratch() as temp:
            path, sniffed = await self._engine_input(src, source, animated=False, temp=temp)
            reply = await self.engine.submit(Blurhash(src=os.fspath(path), sniffed=sniffed))
        assert isinstance(reply, BlurhashResult)
        return reply.blurhash

    async def motion_still(
        self, src: Path, dst: Path, *, source: Discovery, media: Media
    ) -> Discovery:
        """The still pict-rs derives once per video or animation (``src/generate.rs``): the
        first frame. Videos: ffmpeg, WebP when ``media.image.format`` is webp/avif/jxl, PNG for
        png, else JPEG. Animations: ``media.image.format`` or WebP when unset.
        Raises ValueError for a still image (it is its own still)."""
        configured = Fmt(media.image.format) if media.image.format else None
        if source.format.kind is Kind.VIDEO:
            if configured in (Fmt.WEBP, Fmt.AVIF, Fmt.JXL):
                out = Fmt.WEBP
            elif configured is Fmt.PNG:
                out = Fmt.PNG
            else:
                out = Fmt.JPEG
            quality = getattr(media.image.quality, out.value, None)
            await self.run(still_argv(src, dst, out=out, quality=quality), capture_stdout=False)
            return await self.discover(dst)
        if source.format.kind is not Kind.ANIMATION:
            raise ValueError("a still image has no motion still")
        out = configured or Fmt.WEBP
        return await self.render(
            src,
            dst,
            source=source,
            ops=[],
            output=MediaFormat(kind=Kind.IMAGE, fmt=out),
            quality=getattr(media.image.quality, out.value, None),
        )

    async def video(self, src: Path, dst: Path, *, source: Discovery, plan: Plan) -> Discovery:
        """ffmpeg remux or transcode per ``plan``, metadata removed; discovery of the output."""
        await self.run(video_argv(src, dst, plan, has_alpha=source.has_alpha), capture_stdout=False)
        return await self.discover(dst)


def _discovered(out: Fmt, reply: RenderResult) -> Discovery:
    """What ``discover`` finds in a file the engine just wrote and probed (saves a round trip;
    the integration tests check both agree)."""
    frames = reply.pages if reply.pages > 1 else None
    animation = out in (Fmt.GIF, Fmt.APNG) or (out is Fmt.WEBP and frames is not None)
    return Discovery(
        format=MediaFormat(kind=Kind.ANIMATION if animation else Kind.IMAGE, fmt=out),
        width=reply.width,
        height=reply.height,
        frames=frames,
        has_alpha=reply.has_alpha,
    )


ENGINE_BASE_MB = 256  # the worker's own address space: Python, libvips and its codecs


def engine_limits(magick: Magick) -> EngineLimits:
    """``[media.magick]`` as limits of the libvips workers (docs/processing.md). pict-rs
    writes the same keys into ImageMagick's resource policy (pict-rs ``src/magick.rs``):
    width and height bound what is decoded at all, memory is the pixels kept in memory
    before falling back to disk, map adds memory-mapped room, disk bounds what goes to disk.
    ``max_area`` has no libvips counterpart beside ``memory`` (config.NOT_ACTING)."""
    return EngineLimits(
        max_width=magick.max_width,
        max_height=magick.max_height,
        address_space_mb=magick.memory + magick.map + ENGINE_BASE_MB,
        in_memory_mb=magick.memory,
        file_mb=magick.disk,
    )


@asynccontextmanager
async def open_media_tools(
    config: Media,
    *,
    tmp_dir: Path,
    engine_workers: int,
    limiter: trio.CapacityLimiter | None = None,
    metrics: Metrics | None = None,
) -> AsyncIterator[MediaTools]:
    """Start exiftool and ``engine_workers`` engine processes (0 = one per core), yield the
    tools, and stop everything on exit. ``limiter`` caps short-lived tool processes
    (default: one per core). Every run of a tool, exiftool command and engine job is
    counted in ``metrics``."""
    cores = os.cpu_count() or 1
    metrics = metrics if metrics is not None else Metrics()
    exiftool = ExifTool(
        timeout=config.process_timeout,
        warmup_dir=tmp_dir,
        idle_timeout=config.exiftool_idle_timeout,
        metrics=metrics,
    )
    engine = EnginePool(
        size=engine_workers if engine_workers > 0 else cores,
        job_timeout=config.process_timeout,
        limits=engine_limits(config.magick),
        tmp_dir=tmp_dir,
        metrics=metrics,
    )
    tools = MediaTools(
        config=config,
        tmp_dir=tmp_dir,
        engine=engine,
        exiftool=exiftool,
        limiter=limiter if limiter is not None else trio.CapacityLimiter(cores),
        metrics=metrics,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(exiftool.supervise)
        await nursery.start(engine.run)
        try:
            yield tools
        finally:
            nursery.cancel_scope.cancel()
