"""The per-slide job: slide -> tissue -> tiles -> model + saliency -> stitched outputs.

:func:`run_slide` is the one function that turns a slide into its output folder. It
knows nothing of batches, resume or clusters: :mod:`wsi_saliency.batch` calls it locally and the
Dask runner calls the same function on a worker.

Tiles are read by reader threads (each with its own slide handle, see
:mod:`wsi_saliency.prefetch`) while the main thread runs the model, so reading overlaps
compute. On CUDA the batches are copied through pinned memory.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from wsi_saliency import __version__
from wsi_saliency.border import BorderProfile, CalibratingStitcher
from wsi_saliency.config import RunConfig, config_hash, resolve_model_defaults
from wsi_saliency.finite import finite_tiles
from wsi_saliency.inputs import model_fingerprint, slide_fingerprint
from wsi_saliency.models import LoadedModel
from wsi_saliency.plan import plan_slide
from wsi_saliency.prefetch import choose_decode, iter_tile_batches, resolve_workers
from wsi_saliency.readers import SlideReader, open_slide
from wsi_saliency.run_record import ModelRecord, RunRecord, TilingRecord
from wsi_saliency.saliency import SaliencyEngine
from wsi_saliency.saliency.engine import resolve_device
from wsi_saliency.saliency.seams import heatmap_seams, resolve_overlap
from wsi_saliency.stitch import Stitcher, check_tile_geometry
from wsi_saliency.tiling import level_crops, read_tiles, tile_cache
from wsi_saliency.tissue import save_tissue_png, thumbnail_at_spacing
from wsi_saliency.types import BatchResult, Mpp, SlideInfo, TileGrid
from wsi_saliency.writers import (
    collect_hardware,
    collect_versions,
    write_heatmap_outputs,
)
from wsi_saliency.writers.geojson import count_omitted_measurements
from wsi_saliency.writers.run_meta import to_jsonable

__all__ = ["SlideResult", "check_run", "heatmap_map_shape", "run_slide"]

log = logging.getLogger(__name__)

TISSUE_PNG = "tissue.png"
OVERLAY_MAX_PX = 2048
"""Longest side of the thumbnail under ``overlay.png``."""

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class SlideResult:
    """What :func:`run_slide` did for one slide.

    Parameters
    ----------
    slide
        Facts about the slide (no patient data).
    out_dir
        Folder the outputs were written into.
    n_tiles
        Tiles that went through the model.
    timings
        Seconds per stage (``open``, ``tissue``, ``grid``, ``inference``, ``stitch``,
        ``write``, ``total``).
    outputs
        Output files by key (``heatmaps``, ``probability``, ``saliency``,
        ``tiles_geojson``, ``regions_geojson``, ``tiles_csv``, ``overlay``, ``tissue``,
        ``run_json``).
    """

    slide: SlideInfo
    out_dir: Path
    n_tiles: int
    timings: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)


class _Stopwatch:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._t0 = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t

    def total(self) -> dict[str, float]:
        out = {k: round(v, 4) for k, v in self.timings.items()}
        out["total"] = round(time.perf_counter() - self._t0, 4)
        return out


def _overlay_spacing(info: SlideInfo, mpp: Mpp) -> float:
    """Spacing of the thumbnail under ``overlay.png``: about ``OVERLAY_MAX_PX`` on the long
    side, snapped to the first pyramid level at least that coarse so that it is read
    straight from that level without resampling."""
    target = max(1.0, max(info.dimensions) / OVERLAY_MAX_PX)
    coarser = [d for d in info.level_downsamples if d >= target * 0.999]
    ds = min(coarser) if coarser else target
    return ds * mpp.x


def _open(path: Path, config: RunConfig, backend: str | None = None) -> SlideReader:
    return open_slide(
        path,
        backend=backend or config.slide.backend,
        mpp=config.slide.mpp,
        mpp_sidecar=config.slide.mpp_sidecar,
    )


def _slide_facts(info: SlideInfo, mpp: Mpp) -> dict[str, Any]:
    """Slide facts for run.json: geometry and spacing only, never patient data."""
    return {
        "file": Path(info.path).name,
        "backend": info.backend,
        "vendor": info.vendor,
        "dimensions": list(info.dimensions),
        "level_count": info.level_count,
        "level_downsamples": [round(d, 6) for d in info.level_downsamples],
        "mpp": {"x": mpp.x, "y": mpp.y, "source": mpp.source},
        "objective_power": info.objective_power,
    }


@dataclass(frozen=True)
class _TileFeed:
    """How a slide's tiles are read: reader threads and where JPEG tiles are decoded."""

    workers: int
    decode: str  # "cpu" (slide reader + block cache) or "gpu" (jpeg_tiles, nvJPEG)
    reason: str
    page: int | None = None  # TIFF page of the read level (gpu)
    origins: npt.NDArray[np.int64] | None = None  # level corners of the tiles (gpu)

    def record(self, config: RunConfig) -> dict[str, Any]:
        return {"requested": config.inference.decode, "used": self.decode,
                "reason": self.reason}


def _ycbcr_jpeg_level(path: Path, info: SlideInfo, level: int) -> int | None:
    """TIFF page of ``level`` when it is a tiled YCbCr JPEG level, else None."""
    from wsi_saliency.jpeg_tiles import JpegLevel, find_level_page  # noqa: PLC0415

    width, height = info.level_dimensions[level]
    page = find_level_page(path, int(width), int(height))
    if page is None:
        return None
    try:
        with JpegLevel(path, page) as lv:
            return page if lv.ycbcr_jpeg else None
    except (ValueError, OSError):
        return None


def _tile_feed(path: Path, config: RunConfig, info: SlideInfo, grid: TileGrid,
               device: torch.device) -> _TileFeed:
    """Reader threads (``inference.workers``) and decode path (``inference.decode``)."""
    from wsi_saliency import jpeg_tiles  # noqa: PLC0415

    workers = resolve_workers(config.inference.workers, device.type)
    requested = config.inference.decode
    gpu = requested != "cpu" and jpeg_tiles.gpu_jpeg_available(device)
    origins = level_crops(grid) if gpu else None
    page = _ycbcr_jpeg_level(path, info, grid.level) if gpu and origins is not None else None
    used, reason = choose_decode(requested, gpu_decoder=gpu, level_is_ycbcr_jpeg=page is not None,
                                 plain_crops=origins is not None)
    if requested == "gpu" and used != "gpu":
        log.warning("%s: --decode gpu is not possible (%s); decoding on the CPU", path.name,
                    reason)
    if used == "gpu":
        return _TileFeed(workers, used, reason, page=page, origins=origins)
    return _TileFeed(workers, used, reason)


def _tile_batches(
    path: Path,
    config: RunConfig,
    info: SlideInfo,
    grid: TileGrid,
    device: torch.device,
    feed: _TileFeed | None = None,
) -> Iterator[tuple[npt.NDArray[np.int64], Any]]:
    """Tile batches read ahead by reader threads; pinned tensors on CUDA; tensors on the
    device when the feed decodes on the GPU."""
    feed = feed or _tile_feed(path, config, info, grid, device)
    if feed.decode == "gpu":
        yield from _gpu_tile_batches(path, config, grid, device, feed)
        return
    cache = tile_cache(grid)  # shared by the reader threads: each slide tile decoded once

    def read_batch(reader: SlideReader, idx: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
        tiles = read_tiles(reader, grid, idx, cache=cache)
        if device.type == "cuda":
            return torch.from_numpy(tiles).pin_memory()  # type: ignore[return-value]
        return tiles

    yield from iter_tile_batches(
        lambda: _open(path, config, backend=info.backend),
        read_batch,
        len(grid),
        batch_size=config.inference.batch_size,
        workers=feed.workers,
    )


def _gpu_tile_batches(path: Path, config: RunConfig, grid: TileGrid, device: torch.device,
                      feed: _TileFeed) -> Iterator[tuple[npt.NDArray[np.int64], Any]]:
    """Batches decoded straight from the level's JPEG tiles (nvJPEG on ``device``), each
    reader thread with its own :class:`~wsi_saliency.jpeg_tiles.JpegLevel`."""
    from wsi_saliency.jpeg_tiles import JpegLevel, read_regions  # noqa: PLC0415

    assert feed.page is not None and feed.origins is not None
    page, origins, t = feed.page, feed.origins, grid.tile_size

    def read_batch(level: JpegLevel, idx: npt.NDArray[np.int64]) -> Any:
        return read_regions(level, [(int(origins[k, 0]), int(origins[k, 1]), t, t)
                                    for k in idx])

    yield from iter_tile_batches(
        lambda: JpegLevel(path, page, device=device),
        read_batch,
        len(grid),
        batch_size=config.inference.batch_size,
        workers=feed.workers,
    )


def _engine(model: LoadedModel, config: RunConfig, device: torch.device) -> SaliencyEngine:
    method = config.model.method
    return SaliencyEngine(
        model,
        layer=config.model.layer,
        method=None if method == "none" else method,
        smoothing=config.model.smoothing,
        device=device,
        precision=config.inference.precision,
        target=config.model.target,
    )


def heatmap_map_shape(engine: SaliencyEngine) -> tuple[int, int]:
    """Per-tile heatmap resolution: the explained layer's map; ``(1, 1)`` (one heatmap
    pixel per tile) for a prediction-only TorchScript model, which has no layers."""
    if engine.method is None and not engine.layer:
        return (1, 1)
    return engine.map_shape


def check_run(model: LoadedModel, config: RunConfig) -> SaliencyEngine:
    """Check everything a run can check without a slide, before any slide is read.

    Builds the saliency engine (device, layer, method, smoothing, target; a TorchScript
    model asked for saliency) and checks that tiles of the configured size and overlap
    stitch onto whole heatmap pixels of the layer's map. A batch calls this once, so a
    bad value is one usage error instead of the same failure on every slide.

    Parameters
    ----------
    model
        The loaded classifier.
    config
        The run configuration.

    Returns
    -------
    SaliencyEngine
        The engine (the model is now on its device, in eval mode).

    Raises
    ------
    WsiSaliencyError
        ``ConfigError``, ``LayerNotFoundError``, ``SaliencyUnsupportedError``, ...
    """
    config = resolve_model_defaults(config, model.spec)
    assert config.tiling.tile_size is not None
    engine = _engine(model, config, resolve_device(config.inference.device))
    map_shape = heatmap_map_shape(engine)
    overlap = resolve_overlap(config.tiling.overlap, config.tiling.tile_size, map_shape)
    check_tile_geometry(config.tiling.tile_size, overlap, map_shape)
    return engine


def run_slide(
    path: str | Path,
    model: LoadedModel,
    config: RunConfig,
    out_dir: Path,
    *,
    progress: ProgressFn | None = None,
) -> SlideResult:
    """Run the whole pipeline on one slide and write its outputs into ``out_dir``.

    Parameters
    ----------
    path
        The slide file.
    model
        The loaded classifier (see :func:`wsi_saliency.models.load_model`).
    config
        The run configuration; ``None`` tiling values come from the model's config.
    out_dir
        Existing, empty folder for this slide's outputs (the batch passes a
        temporary folder it renames into place when this returns).
    progress
        Called as ``progress(done_tiles, total_tiles)`` after every batch.

    Returns
    -------
    SlideResult
        Slide facts, tile count, timings and output paths.

    Raises
    ------
    WsiSaliencyError
        Unreadable slide, missing MPP, no tissue, slide smaller than a tile, bad
        layer/method, ... Outputs already written to ``out_dir`` are left for the
        caller to discard.
    """
    slide_path = Path(path)
    out_dir = Path(out_dir)
    watch = _Stopwatch()
    config = resolve_model_defaults(config, model.spec)
    tile_size = config.tiling.tile_size
    spacing = config.tiling.spacing
    assert tile_size is not None and spacing is not None
    device = resolve_device(config.inference.device)

    with watch.stage("open"):
        reader = _open(slide_path, config)
    with reader:
        info = reader.info
        engine = _engine(model, config, device)
        plan = plan_slide(reader, config, map_shape=heatmap_map_shape(engine), timer=watch.stage)
        grid, mask = plan.grid, plan.mask
        scratch = out_dir / ".scratch.zarr"
        explain = engine.method is not None

        def make_stitcher(border: BorderProfile | None) -> Stitcher:
            return Stitcher(
                scratch,
                grid,
                heatmap_map_shape(engine),
                model.spec.class_names,
                blend=config.output.blend,
                border=border,
                tumor_class=model.spec.tumor_class,
                saliency=explain,
            )

        # the reliability blend measures the tiles' border profile on the first tiles
        stitcher = CalibratingStitcher(
            make_stitcher, calibrate=explain and config.output.blend == "reliability")
        log.info(
            "%s: %d tiles of %d px at %.3g um/px (level %d), layer %s, %s + %s on %s (%s)",
            slide_path.name, len(grid), tile_size, spacing, grid.level, engine.layer,
            config.model.method, config.model.smoothing, device, engine.precision,
        )
        feed = _tile_feed(slide_path, config, info, grid, device)
        log.info("%s: %d reader threads, tiles decoded on the %s (%s)", slide_path.name,
                 feed.workers, feed.decode, feed.reason)
        n_done = 0
        n_nonfinite = 0
        t_inf = time.perf_counter()
        for idx, tiles in _tile_batches(slide_path, config, info, grid, device, feed):
            with watch.stage("model"):
                if explain:
                    probs, maps = engine.run(tiles)
                else:
                    probs, maps = engine.predict(tiles), None
            with watch.stage("stitch"):
                idx_ok, probs, maps = finite_tiles(idx, probs, maps)
                n_nonfinite += len(idx) - len(idx_ok)
                stitcher.add(BatchResult(indices=idx_ok, probabilities=probs, maps=maps))
            n_done += len(idx)
            if progress is not None:
                progress(n_done, len(grid))
        watch.timings["inference"] = time.perf_counter() - t_inf
        with watch.stage("finalize"):
            heatmaps = stitcher.finish().finalize()
        seams = None
        if explain:
            with watch.stage("seams"):
                # seam ratio of the stitched saliency (channel 1) on the grid's stride cells
                seams = heatmap_seams(heatmaps.heatmap, grid.tile_size, grid.stride,
                                      engine.map_shape, channel=1)
        if n_nonfinite:
            log.warning(
                "%s: the model gave NaN or infinite outputs for %d of %d tiles; they are left "
                "out of the heatmaps and GeoJSON (run.json: nonfinite.tiles_left_out)",
                slide_path.name, n_nonfinite, n_done,
            )

        with watch.stage("write"):
            overlay_thumb, overlay_ds = thumbnail_at_spacing(
                reader, _overlay_spacing(info, plan.mpp)
            )
            outputs, scaling = write_heatmap_outputs(
                out_dir,
                heatmaps,
                thumbnail=overlay_thumb,
                thumbnail_downsample=overlay_ds,
                output=config.output,
                name=slide_path.stem,
            )
            outputs["tissue"] = save_tissue_png(plan.thumbnail, mask, out_dir / TISSUE_PNG)
            shutil.rmtree(scratch, ignore_errors=True)

    timings = watch.total()
    tiles_per_s = n_done / watch.timings["inference"] if watch.timings["inference"] > 0 else 0.0
    fingerprint = model_fingerprint(model.spec)
    record = RunRecord(
        wsi_saliency_version=__version__,
        status="done",
        config_hash=config_hash(config, fingerprint),
        inputs=slide_fingerprint(
            slide_path, mpp_sidecar=config.slide.mpp_sidecar, roi=config.tissue.roi
        ),
        config=to_jsonable(config),
        model=ModelRecord(
            name=model.spec.name,
            architecture=model.spec.architecture,
            weights_file=model.spec.weights_file,
            weights_sha256=model.spec.weights_sha256,
            fingerprint=fingerprint,
            class_names=tuple(model.spec.class_names),
            tumor_class=model.spec.tumor_class,
            patch_size=model.spec.patch_size,
            spacing_um_px=model.spec.spacing,
        ),
        saliency={
            "layer": engine.layer,
            "method": engine.method or "none",
            "smoothing": engine.smoothing,
            "target": model.spec.class_names[engine.target],
            "map_shape": list(heatmap_map_shape(engine)),
            "display_scaling": scaling.as_dict() if scaling is not None else None,
        },
        # seam ratio of the stitched saliency map (1.0 = no tile grid visible; see
        # wsi_saliency.saliency.seams): magnitude and TV at tile borders vs interiors
        seams=({**seams.as_dict(), "border": (stitcher.profile.as_dict()
                                              if stitcher.profile is not None else None)}
               if seams is not None else {}),
        nonfinite={
            "tiles_left_out": n_nonfinite,
            "geojson_measurements_omitted": count_omitted_measurements(heatmaps),
        },
        slide=_slide_facts(info, plan.mpp),
        tissue={
            "method": mask.method,
            "threshold": mask.threshold,
            "thumbnail_spacing_um": mask.spacing,
        },
        tiling=TilingRecord(
            tile_size=grid.tile_size,
            spacing_um_px=grid.spacing,
            overlap=grid.overlap,
            stride=grid.stride,
            min_tissue=config.tiling.min_tissue,
            read_level=grid.level,
            read_downsample=grid.level_downsample,
            grid_shape=grid.grid_shape,
            n_tiles=len(grid),
        ),
        heatmap={
            "pixel_size_um": heatmaps.pixel_size_um,
            "shape": list(heatmaps.shape),
            "channels": list(heatmaps.channel_names),
            "blend": heatmaps.blend,
            "coverage": heatmaps.coverage,
        },
        device=str(device),
        inference={
            "batch_size": config.inference.batch_size,
            "workers": feed.workers,
            "workers_requested": config.inference.workers,
            "decode": feed.record(config),
            "batchnorms_folded": len(engine.folded_batchnorms),
            "stem_slices": (None if engine.stem_plan is None else
                            {"modules": list(engine.stem_plan.paths),
                             "tiles_per_slice": engine.stem_plan.slice_size}),
            "precision": engine.precision,
            "precision_requested": config.inference.precision,
            "channels_last": engine.channels_last,
            "tiles_per_second": round(tiles_per_s, 2),
        },
        timings_s=timings,
        outputs=tuple(sorted(p.name for p in outputs.values())),
        versions=collect_versions(),
        hardware=collect_hardware(),
    )
    outputs["run_json"] = record.write(out_dir)
    return SlideResult(slide=info, out_dir=out_dir, n_tiles=n_done, timings=timings,
                       outputs=outputs)
