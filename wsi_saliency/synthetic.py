"""Deterministic synthetic whole-slide images for tests, demos and benchmarks.

A :class:`SyntheticSlide` is a tiny, frozen description of a slide: its level-0 size,
its spacing and a few polygons (level-0 pixel vertices) of tissue and of tumour. From it:

* :func:`render_region` paints any region at any downsample with an H&E-like texture.
  The texture is procedural: every random quantity is an integer hash of level-0 cell
  or pixel coordinates (and the spec's ``seed``), so a region renders identically
  whether it is rendered alone or as part of a larger one, and no global random state
  is touched.
* :func:`tissue_mask` / :func:`tumour_mask` give the ground-truth masks.
* :func:`write_slide` writes a pyramidal TIFF (Aperio-style SVS or generic tiled TIFF)
  tile by tile from generators; tiles without tissue reuse one cached encoded white
  tile, so a 100,000 x 100,000 px sparse slide is written in seconds with little memory.
* :func:`write_coordinate_slide` writes a lossless slide whose pixels encode their own
  level-0 coordinates (see :func:`coordinate_values`) for exact-geometry tests.
* :func:`demo_slide_spec`, :func:`write_demo_slide` and :func:`sample_patches` give the
  fixed demo slide and labelled training patches for the bundled demo model.

Pixel convention: output pixel ``(r, c)`` of a region rendered at ``(x, y)`` with
``downsample`` shows the level-0 point ``(x + (c + 0.5) * downsample,
y + (r + 0.5) * downsample)``. Tumour polygons count as tissue too.

Texture (all constants are module-level and immutable):

* background: flat :data:`BACKGROUND_RGB` (no noise, so empty tiles are identical);
* normal tissue: pink eosin stroma :data:`STROMA_RGB` with slow colour variation and
  sparse small purple nuclei (:data:`NORMAL_NUCLEUS_RGB`, 6-9 um across, one nucleus
  candidate per 16 um cell, :data:`NORMAL_NUCLEUS_DENSITY` of cells filled);
* tumour: purplish cytoplasm :data:`TUMOUR_CYTOPLASM_RGB` with dense, larger
  (9-12 um), darker blue-purple nuclei :data:`TUMOUR_NUCLEUS_RGB` - both darker and
  bluer in mean colour than normal tissue, and learnable from 224 px at 0.5 um/px.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import shapely

__all__ = [
    "BACKGROUND_RGB",
    "NORMAL_NUCLEUS_RGB",
    "STROMA_RGB",
    "TUMOUR_CYTOPLASM_RGB",
    "TUMOUR_NUCLEUS_RGB",
    "SyntheticSlide",
    "coordinate_values",
    "demo_slide_spec",
    "level_shapes",
    "render_region",
    "sample_patches",
    "tissue_mask",
    "tumour_mask",
    "write_coordinate_slide",
    "write_demo_slide",
    "write_slide",
]

Polygon = tuple[tuple[float, float], ...]
FArray = npt.NDArray[Any]  # float32/float64 arrays
RGB = tuple[int, int, int]

#: Background (glass) colour; flat so that every empty tile encodes identically.
BACKGROUND_RGB: Final[RGB] = (240, 238, 242)
#: Eosin-stained stroma of normal tissue.
STROMA_RGB: Final[RGB] = (236, 168, 202)
#: Amplitude of the slow stroma colour variation (added as (v - 0.5) * amplitude).
STROMA_VARIATION: Final[tuple[float, float, float]] = (14.0, 26.0, 18.0)
#: Lattice period (um) of the slow colour variation.
STROMA_VARIATION_UM: Final[float] = 40.0
#: Haematoxylin-stained nuclei of normal tissue.
NORMAL_NUCLEUS_RGB: Final[RGB] = (128, 72, 160)
#: Cytoplasm between tumour cells (more purple than stroma).
TUMOUR_CYTOPLASM_RGB: Final[RGB] = (200, 140, 196)
#: Tumour nuclei: darker and bluer.
TUMOUR_NUCLEUS_RGB: Final[RGB] = (62, 40, 128)
#: Per-pixel noise amplitude (grey levels, +-).
PIXEL_NOISE: Final[float] = 8.0
#: Nucleus lattice cell (um), fraction of cells holding a nucleus, nucleus radius (um).
NORMAL_CELL_UM: Final[float] = 16.0
NORMAL_NUCLEUS_DENSITY: Final[float] = 0.35
NORMAL_NUCLEUS_RADIUS_UM: Final[tuple[float, float]] = (3.0, 4.5)
TUMOUR_CELL_UM: Final[float] = 13.0
TUMOUR_NUCLEUS_DENSITY: Final[float] = 0.92
TUMOUR_NUCLEUS_RADIUS_UM: Final[tuple[float, float]] = (4.5, 6.0)

#: Period (level-0 px) of the triangle waves of :func:`coordinate_values`.
COORDINATE_PERIOD: Final[int] = 510

# hash salts (distinct streams)
_SALT_NOISE: Final[int] = 1
_SALT_VARIATION: Final[int] = 2
_SALT_NUCLEUS: Final[tuple[int, int, int, int, int]] = (11, 12, 13, 14, 15)
_SALT_TUMOUR: Final[tuple[int, int, int, int, int]] = (21, 22, 23, 24, 25)

_U64 = np.uint64


@dataclass(frozen=True)
class SyntheticSlide:
    """Specification of a generated slide.

    Parameters
    ----------
    width, height
        Level-0 size in pixels.
    mpp
        Level-0 spacing in micrometres per pixel (x and y).
    tissue
        Tissue polygons; each polygon is a tuple of level-0 ``(x, y)`` vertices.
    tumour
        Tumour polygons (normally inside tissue); tumour counts as tissue.
    seed
        Texture seed; different seeds give different (but equally deterministic) textures.
    """

    width: int
    height: int
    mpp: float = 0.5
    tissue: tuple[Polygon, ...] = ()
    tumour: tuple[Polygon, ...] = ()
    seed: int = 0


# --------------------------------------------------------------------------- hashing


def _hash01(
    ix: npt.NDArray[np.int64], iy: npt.NDArray[np.int64], seed: int, salt: int
) -> npt.NDArray[np.float64]:
    """Uniform [0, 1) values from integer lattice coordinates (splitmix64 finaliser)."""
    with np.errstate(over="ignore"):
        h = (ix.astype(np.int64).view(_U64) * _U64(0x9E3779B97F4A7C15)) ^ (
            iy.astype(np.int64).view(_U64) * _U64(0xC2B2AE3D27D4EB4F)
        )
        h ^= _U64((seed * 0x165667B19E3779F9 + salt * 0x27D4EB2F165667C5) & 0xFFFFFFFFFFFFFFFF)
        h ^= h >> _U64(30)
        h *= _U64(0xBF58476D1CE4E5B9)
        h ^= h >> _U64(27)
        h *= _U64(0x94D049BB133111EB)
        h ^= h >> _U64(31)
    return (h >> _U64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


# ------------------------------------------------------------------------- geometry


class _Geometry:
    """Shapely geometry of a spec, built once per call (not module state)."""

    def __init__(self, spec: SyntheticSlide) -> None:
        self.tissue_polys = tuple(spec.tissue) + tuple(spec.tumour)
        self.tumour_polys = tuple(spec.tumour)
        self.tissue = _union(self.tissue_polys)
        self.tumour = _union(self.tumour_polys)

    def tissue_intersects(self, boxes: npt.NDArray[np.object_]) -> npt.NDArray[np.bool_]:
        if self.tissue is None:
            return np.zeros(boxes.shape, dtype=bool)
        return np.asarray(shapely.intersects(self.tissue, boxes), dtype=bool)


def _union(polys: tuple[Polygon, ...]) -> shapely.Geometry | None:
    if not polys:
        return None
    geom = shapely.union_all([shapely.make_valid(shapely.Polygon(p)) for p in polys])
    shapely.prepare(geom)
    return geom


def _region_mask(
    polys: tuple[Polygon, ...],
    geom: shapely.Geometry | None,
    x: float,
    y: float,
    width: int,
    height: int,
    downsample: float,
) -> npt.NDArray[np.bool_]:
    """Boolean mask of pixel centres (see module doc) inside any of ``polys``."""
    out = np.zeros((height, width), dtype=bool)
    if geom is None or width == 0 or height == 0:
        return out
    box = shapely.box(x, y, x + width * downsample, y + height * downsample)
    if not shapely.intersects(geom, box):
        return out
    if shapely.contains_properly(geom, box):
        out[:] = True
        return out
    for poly in polys:
        v = np.asarray(poly, dtype=np.float64)
        cols = (v[:, 0] - x) / downsample - 0.5
        rows = (v[:, 1] - y) / downsample - 0.5
        if cols.max() < -1 or rows.max() < -1 or cols.min() > width or rows.min() > height:
            continue
        out |= _fill_polygon(cols, rows, height, width)
    return out


def _fill_polygon(
    cols: npt.NDArray[np.float64], rows: npt.NDArray[np.float64], height: int, width: int
) -> npt.NDArray[np.bool_]:
    """Even-odd scanline fill: True where the integer point ``(c, r)`` is inside.

    Exact point-in-polygon at pixel centres (half-open edge rule), vectorised over
    rows and edges.
    """
    x1, y1 = cols, rows
    x2, y2 = np.roll(cols, -1), np.roll(rows, -1)
    r0 = max(0, math.ceil(float(min(rows.min(), height))))
    r1 = min(height, math.floor(float(rows.max())) + 1)
    out = np.zeros((height, width), dtype=bool)
    if r1 <= r0:
        return out
    ry = np.arange(r0, r1, dtype=np.float64)[:, None]
    crosses = ((y1 <= ry) & (ry < y2)) | ((y2 <= ry) & (ry < y1))
    ri, ei = np.nonzero(crosses)
    if ri.size == 0:
        return out
    yy = ry[ri, 0]
    xs = x1[ei] + (yy - y1[ei]) * (x2[ei] - x1[ei]) / (y2[ei] - y1[ei])
    k = np.clip(np.floor(xs).astype(np.int64) + 1, 0, width)
    diff = np.zeros((r1 - r0, width + 1), dtype=np.int32)
    np.add.at(diff, (ri, k), 1)
    out[r0:r1] = (np.cumsum(diff[:, :width], axis=1) & 1).astype(bool)
    return out


# ------------------------------------------------------------------------ rendering


def _value_noise(px: FArray, py: FArray, period: float, seed: int, salt: int) -> FArray:
    """Smooth value noise in [0, 1) on the grid ``py[:, None] x px[None, :]``.

    Bilinear (smoothstep) interpolation of hashed values on a lattice of ``period``.
    """
    gx = px / period
    gy = py / period
    ix = np.floor(gx).astype(np.int64)
    iy = np.floor(gy).astype(np.int64)
    fx = gx - ix
    fy = gy - iy
    fx = (fx * fx * (3 - 2 * fx))[None, :].astype(np.float32)
    fy = (fy * fy * (3 - 2 * fy))[:, None].astype(np.float32)
    # hash only the lattice points that samples use (at coarse downsamples the lattice
    # is far denser than the samples)
    ux, jx = np.unique(np.concatenate([ix, ix + 1]), return_inverse=True)
    uy, jy = np.unique(np.concatenate([iy, iy + 1]), return_inverse=True)
    lx0, lx1 = jx[: ix.size], jx[ix.size :]
    ly0, ly1 = jy[: iy.size], jy[iy.size :]
    lat = _hash01(ux[None, :], uy[:, None], seed, salt).astype(np.float32)
    rows = lat[:, lx0] * (1 - fx) + lat[:, lx1] * fx  # interpolate along x on lattice rows
    out: FArray = rows[ly0] * (1 - fy) + rows[ly1] * fy
    return out


def _nuclei(
    px: FArray,
    py: FArray,
    cell_px: float,
    density: float,
    radius_px: tuple[float, float],
    seed: int,
    salts: tuple[int, int, int, int, int],
) -> FArray:
    """Nucleus opacity in [0, 1] (0 = none) on the grid ``py[:, None] x px[None, :]``.

    One candidate nucleus per lattice cell of ``cell_px``; its presence, size,
    elongation and position inside the cell are hashes of the cell's integer indices,
    and it lies wholly inside its cell.
    """
    ix = np.floor(px / cell_px).astype(np.int64)
    iy = np.floor(py / cell_px).astype(np.int64)
    # only the cells that samples fall in (a coarse render skips most cells)
    ux, lxi = np.unique(ix, return_inverse=True)
    uy, lyi = np.unique(iy, return_inverse=True)
    cix = ux[None, :]
    ciy = uy[:, None]
    present = _hash01(cix, ciy, seed, salts[0]) < density
    r = radius_px[0] + (radius_px[1] - radius_px[0]) * _hash01(cix, ciy, seed, salts[1])
    r = np.minimum(r, cell_px / 2.0)
    rx = r
    ry = r * (0.75 + 0.25 * _hash01(cix, ciy, seed, salts[4]))
    cx = cix * cell_px + rx + _hash01(cix, ciy, seed, salts[2]) * np.maximum(cell_px - 2 * rx, 0.0)
    cy = ciy * cell_px + ry + _hash01(cix, ciy, seed, salts[3]) * np.maximum(cell_px - 2 * ry, 0.0)
    inv_rx = 1.0 / rx
    inv_ry = 1.0 / ry
    cx = np.where(present, cx, -1e12)  # absent nucleus: centre far away
    lx = lxi.reshape(-1)[None, :]
    ly = lyi.reshape(-1)[:, None]
    dx = (px[None, :] - cx[ly, lx]) * inv_rx[ly, lx]
    dy = (py[:, None] - cy[ly, lx]) * inv_ry[ly, lx]
    d2 = (dx * dx + dy * dy).astype(np.float32)
    # darker rim, slightly lighter centre (chromatin at the membrane)
    out: npt.NDArray[np.float32] = np.where(d2 <= 1.0, 0.8 + 0.2 * d2, np.float32(0.0))
    return out


#: Size of the tiled per-pixel noise table (level-0 px; primes, so it never lines up).
_NOISE_TABLE: Final[tuple[int, int]] = (97, 89)


def _pixel_noise(px: FArray, py: FArray, seed: int) -> FArray:
    """Per level-0-pixel noise in [-1, 1) from a tiled hash table (keyed by global coords)."""
    th, tw = _NOISE_TABLE
    table = _hash01(
        np.arange(tw, dtype=np.int64)[None, :],
        np.arange(th, dtype=np.int64)[:, None],
        seed,
        _SALT_NOISE,
    )
    jx = np.mod(np.floor(px).astype(np.int64), tw)
    jy = np.mod(np.floor(py).astype(np.int64), th)
    table32: FArray = table.astype(np.float32) * np.float32(2.0) - np.float32(1.0)
    out: FArray = table32[jy[:, None], jx[None, :]]
    return out


def _render_points(
    spec: SyntheticSlide,
    geom: _Geometry,
    x: float,
    y: float,
    width: int,
    height: int,
    downsample: float,
) -> FArray:
    """Float RGB (height, width, 3) at the pixel-centre points of a region."""
    out = np.empty((height, width, 3), dtype=np.float32)
    out[:] = BACKGROUND_RGB
    tissue = _region_mask(geom.tissue_polys, geom.tissue, x, y, width, height, downsample)
    if not tissue.any():
        return out
    tumour = _region_mask(geom.tumour_polys, geom.tumour, x, y, width, height, downsample)
    px = x + (np.arange(width) + 0.5) * downsample
    py = y + (np.arange(height) + 0.5) * downsample
    mpp = spec.mpp
    seed = spec.seed
    any_tum = bool(tumour.any())
    all_tum = any_tum and bool(tumour[tissue].all())

    f32 = np.float32
    var = _value_noise(px, py, STROMA_VARIATION_UM / mpp, seed, _SALT_VARIATION)[..., None] - f32(
        0.5
    )
    stroma = np.asarray(STROMA_RGB, f32)
    tcyto = np.asarray(TUMOUR_CYTOPLASM_RGB, f32)
    base = np.where(tumour[..., None], tcyto, stroma) if any_tum else stroma
    col = var * np.asarray(STROMA_VARIATION, f32)
    col += base

    a: npt.NDArray[np.float32] | None = None
    if not all_tum:
        a = _nuclei(
            px,
            py,
            NORMAL_CELL_UM / mpp,
            NORMAL_NUCLEUS_DENSITY,
            (NORMAL_NUCLEUS_RADIUS_UM[0] / mpp, NORMAL_NUCLEUS_RADIUS_UM[1] / mpp),
            seed,
            _SALT_NUCLEUS,
        )
    if any_tum:
        a_t = _nuclei(
            px,
            py,
            TUMOUR_CELL_UM / mpp,
            TUMOUR_NUCLEUS_DENSITY,
            (TUMOUR_NUCLEUS_RADIUS_UM[0] / mpp, TUMOUR_NUCLEUS_RADIUS_UM[1] / mpp),
            seed,
            _SALT_TUMOUR,
        )
        a = a_t if a is None else np.where(tumour, a_t, a)
        ncol = np.where(
            tumour[..., None],
            np.asarray(TUMOUR_NUCLEUS_RGB, f32),
            np.asarray(NORMAL_NUCLEUS_RGB, f32),
        )
    else:
        ncol = np.asarray(NORMAL_NUCLEUS_RGB, f32)
    assert a is not None
    col += (ncol - col) * a[..., None]
    col += (_pixel_noise(px, py, seed) * f32(PIXEL_NOISE))[..., None]
    if tissue.all():
        return col
    out[tissue] = col[tissue]
    return out


def _render(
    spec: SyntheticSlide,
    geom: _Geometry,
    x: float,
    y: float,
    width: int,
    height: int,
    downsample: float,
    supersample: int,
) -> npt.NDArray[np.uint8]:
    s = max(1, int(supersample))
    if s == 1:
        f = _render_points(spec, geom, x, y, width, height, downsample)
    else:
        f = _render_points(spec, geom, x, y, width * s, height * s, downsample / s)
        f = f.reshape(height, s, width, s, 3).mean(axis=(1, 3))
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def render_region(
    spec: SyntheticSlide,
    x: float,
    y: float,
    width: int,
    height: int,
    downsample: float = 1.0,
    *,
    supersample: int = 1,
) -> npt.NDArray[np.uint8]:
    """Render a region of a synthetic slide.

    Parameters
    ----------
    spec
        The slide.
    x, y
        Level-0 position of the region's top-left corner.
    width, height
        Output size in pixels.
    downsample
        Level-0 pixels per output pixel.
    supersample
        When > 1, each output pixel is the mean of ``supersample**2`` evenly spaced
        point samples over its footprint (a box filter); 1 = point sampling.

    Returns
    -------
    numpy.ndarray
        uint8 ``(height, width, 3)``; pixel ``(r, c)`` shows the level-0 point
        ``(x + (c + 0.5) * downsample, y + (r + 0.5) * downsample)``.
    """
    return _render(
        spec, _Geometry(spec), x, y, int(width), int(height), float(downsample), supersample
    )


def _mask(
    polys: tuple[Polygon, ...], spec: SyntheticSlide, downsample: float
) -> npt.NDArray[np.bool_]:
    h = math.ceil(spec.height / downsample)
    w = math.ceil(spec.width / downsample)
    return _region_mask(polys, _union(polys), 0.0, 0.0, w, h, float(downsample))


def tissue_mask(spec: SyntheticSlide, downsample: float) -> npt.NDArray[np.bool_]:
    """Ground-truth tissue (tissue or tumour polygons) at ``downsample``.

    Returns
    -------
    numpy.ndarray
        bool ``(ceil(height / downsample), ceil(width / downsample))``; pixel ``(r, c)``
        tells whether level-0 point ``((c + 0.5) * ds, (r + 0.5) * ds)`` is tissue.
    """
    return _mask(tuple(spec.tissue) + tuple(spec.tumour), spec, downsample)


def tumour_mask(spec: SyntheticSlide, downsample: float) -> npt.NDArray[np.bool_]:
    """Ground-truth tumour at ``downsample`` (same shape and convention as tissue_mask)."""
    return _mask(tuple(spec.tumour), spec, downsample)


# -------------------------------------------------------------------------- writing


def level_shapes(
    width: int, height: int, n_levels: int, level_step: int
) -> list[tuple[int, int, int]]:
    """``(width, height, downsample)`` of each pyramid level: ``ceil(size / step**k)``."""
    out = []
    for k in range(n_levels):
        d = level_step**k
        out.append((max(1, math.ceil(width / d)), max(1, math.ceil(height / d)), d))
    return out


def _auto_levels(width: int, height: int, tile: int, level_step: int) -> int:
    n = 1
    while max(width, height) / level_step ** (n - 1) > 2 * tile and n < 12:
        n += 1
    return n


def _encoder(
    compression: str, quality: int
) -> tuple[Callable[[npt.NDArray[np.uint8]], bytes], str, dict[str, object]]:
    """Tile encoder matching what tifffile writes for ``compression``.

    Returns the encoder, tifffile's ``compression`` value and extra write kwargs.
    """
    import imagecodecs

    comp = compression.lower()
    if comp == "jpeg":

        def enc(a: npt.NDArray[np.uint8]) -> bytes:
            return bytes(
                imagecodecs.jpeg8_encode(
                    a, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2)
                )
            )

        return enc, "jpeg", {"subsampling": (2, 2)}
    if comp in ("zlib", "deflate", "adobe_deflate"):

        def enc(a: npt.NDArray[np.uint8]) -> bytes:
            return bytes(imagecodecs.zlib_encode(np.ascontiguousarray(a).tobytes(), level=6))

        return enc, "zlib", {}
    if comp in ("none", "raw"):

        def enc(a: npt.NDArray[np.uint8]) -> bytes:
            return np.ascontiguousarray(a).tobytes()

        return enc, "none", {}
    raise ValueError(f"unsupported compression {compression!r}; use 'jpeg', 'zlib' or 'none'")


def _tile_bytes(
    render: Callable[[int, int, int, int, float], npt.NDArray[np.uint8]],
    has_content: Callable[[npt.NDArray[np.float64], float, float, float], npt.NDArray[np.bool_]],
    level_w: int,
    level_h: int,
    downsample: float,
    tile: int,
    encode: Callable[[npt.NDArray[np.uint8]], bytes],
    blank: bytes | None,
) -> Iterator[bytes]:
    """Encoded tiles of one level in row-major order."""
    n_cols = math.ceil(level_w / tile)
    n_rows = math.ceil(level_h / tile)
    x0s = np.arange(n_cols, dtype=np.float64) * tile * downsample
    step = tile * downsample
    for r in range(n_rows):
        y0 = r * step
        content = has_content(x0s, y0, step, step) if blank is not None else np.ones(n_cols, bool)
        for c in range(n_cols):
            if not content[c]:
                assert blank is not None
                yield blank
                continue
            a = render(c * tile, r * tile, tile, tile, downsample)
            yield encode(a)


def _aperio_description(
    w0: int, h0: int, w: int, h: int, tile: int | None, mpp: float | None, comp: str, first: bool
) -> str:
    head = "Aperio Image Library v12.0.15 \r\n"
    tile_txt = f" ({tile}x{tile})" if tile else ""
    if first:
        desc = f"{head}{w0}x{h0} [0,0 {w0}x{h0}]{tile_txt} {comp}/RGB Q=90"
    else:
        desc = f"{head}{w0}x{h0} -> {w}x{h} - {tile_txt} {comp}/RGB Q=90"
    if mpp is not None:
        desc += f"|AppMag = {round(10.0 / mpp):d}|MPP = {mpp:.6g}"
    desc += "|Filename = synthetic|ScanScope ID = SYNTHETIC"
    return desc


def _write_pyramid(
    path: Path,
    width: int,
    height: int,
    mpp: float,
    render: Callable[[int, int, int, int, float], npt.NDArray[np.uint8]],
    has_content: Callable[[npt.NDArray[np.float64], float, float, float], npt.NDArray[np.bool_]],
    blank_rgb: RGB | None,
    *,
    kind: str,
    tile: int,
    compression: str,
    n_levels: int | None,
    level_step: int | None,
    write_mpp: bool,
    quality: int = 90,
) -> Path:
    import tifffile

    if kind not in ("svs", "tiff"):
        raise ValueError(f"unsupported slide kind {kind!r}; use 'svs' or 'tiff'")
    if tile % 16:
        raise ValueError(f"tile size {tile} must be a multiple of 16")
    step = level_step if level_step is not None else (4 if kind == "svs" else 2)
    n = n_levels if n_levels is not None else _auto_levels(width, height, tile, step)
    levels = level_shapes(width, height, n, step)
    encode, comp, extra = _encoder(compression, quality)
    blank = None
    if blank_rgb is not None:
        a = np.empty((tile, tile, 3), np.uint8)
        a[:] = blank_rgb
        blank = encode(a)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bigtiff = width * height * 3 * 4 / 3 > 2**31 - 2**26
    comp_name = {"jpeg": "JPEG", "zlib": "Deflate", "none": "Raw"}[comp]
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
        for k, (lw, lh, d) in enumerate(levels):
            kwargs: dict[str, object] = {
                "shape": (lh, lw, 3),
                "dtype": np.uint8,
                "tile": (tile, tile),
                "photometric": "rgb",
                "compression": comp,
                "metadata": None,
                **extra,
            }
            if kind == "svs":
                kwargs["description"] = _aperio_description(
                    width, height, lw, lh, tile, mpp if write_mpp else None, comp_name, k == 0
                )
                kwargs["subfiletype"] = 0
            else:
                kwargs["subfiletype"] = 0 if k == 0 else 1
                if write_mpp:
                    ppcm = 1e4 / (mpp * d)
                    kwargs["resolution"] = (ppcm, ppcm)
                    kwargs["resolutionunit"] = "CENTIMETER"
            data = _tile_bytes(render, has_content, lw, lh, float(d), tile, encode, blank)
            tw.write(data, **kwargs)  # type: ignore[arg-type]
            if kind == "svs" and k == 0:
                # Aperio layout: page 1 is a small stripped thumbnail (tifffile and
                # OpenSlide both expect it); then the further levels.
                td = max(width, height) / 512.0
                tw_, th_ = max(1, round(width / td)), max(1, round(height / td))
                thumb = render(0, 0, tw_, th_, max(width / tw_, height / th_))
                tw.write(
                    thumb,
                    photometric="rgb",
                    compression="jpeg" if comp == "jpeg" else comp,
                    description=_aperio_description(
                        width, height, tw_, th_, None, mpp if write_mpp else None, comp_name, False
                    ),
                    metadata=None,
                    subfiletype=0,
                    rowsperstrip=16,
                )
    return path


def write_slide(
    spec: SyntheticSlide,
    path: str | Path,
    *,
    kind: str = "svs",
    tile: int = 256,
    compression: str = "jpeg",
    n_levels: int | None = None,
    write_mpp: bool = True,
    level_step: int | None = None,
    quality: int = 90,
) -> Path:
    """Write a synthetic slide as a pyramidal tiled TIFF.

    Parameters
    ----------
    spec
        The slide to write.
    path
        Output file.
    kind
        ``"svs"``: Aperio-style (ImageDescription ``Aperio Image Library ...|AppMag =
        20|MPP = 0.5``, page 1 a stripped thumbnail, levels as further tiled pages;
        OpenSlide vendor ``aperio``). ``"tiff"``: generic tiled pyramidal TIFF (levels in
        the main IFD chain; OpenSlide vendor ``generic-tiff``) with the spacing in the
        TIFF resolution tags (unit centimetre) when ``write_mpp``. (OME-TIFF is not
        written; any other kind raises ``ValueError``.)
    tile
        Tile width = height (multiple of 16).
    compression
        ``"jpeg"``, ``"zlib"`` or ``"none"``.
    n_levels
        Number of pyramid levels; default: until the level fits in two tiles.
    write_mpp
        Record the spacing in the file (Aperio ``MPP`` or resolution tags).
    level_step
        Downsample between consecutive levels (default 4 for svs, 2 for tiff).
        Level ``k`` has size ``ceil(size / level_step**k)``.
    quality
        JPEG quality.

    Returns
    -------
    pathlib.Path
        ``path``.

    Notes
    -----
    Memory stays bounded (one tile at a time); tiles without tissue are a single cached
    encoded background tile. Level ``k > 0`` is rendered directly from the spec with a
    2 x 2 box filter per pixel.
    """
    geom = _Geometry(spec)

    def render(x: int, y: int, w: int, h: int, ds: float) -> npt.NDArray[np.uint8]:
        return _render(spec, geom, x * ds, y * ds, w, h, ds, 2 if ds >= 2 else 1)

    def has_content(
        x0s: npt.NDArray[np.float64], y0: float, w: float, h: float
    ) -> npt.NDArray[np.bool_]:
        boxes = shapely.box(x0s, y0, x0s + w, y0 + h)
        return geom.tissue_intersects(np.asarray(boxes))

    return _write_pyramid(
        Path(path),
        spec.width,
        spec.height,
        spec.mpp,
        render,
        has_content,
        BACKGROUND_RGB,
        kind=kind,
        tile=tile,
        compression=compression,
        n_levels=n_levels,
        level_step=level_step,
        write_mpp=write_mpp,
        quality=quality,
    )


# ---------------------------------------------------------------- coordinate slide


def _triangle(t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    p = float(COORDINATE_PERIOD)
    return np.abs(np.mod(t, p) - p / 2.0)


def coordinate_values(x: npt.ArrayLike, y: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The colour a coordinate slide has at level-0 point(s) ``(x, y)``.

    Encoding (continuous; stored values are rounded to uint8):

    * R = triangle wave of ``x`` with period :data:`COORDINATE_PERIOD` (510 px) and
      slope +-1 grey level per level-0 px: ``|x mod 510 - 255|``;
    * G = the same wave of ``y``;
    * B = ``(x + y) / 32`` (clipped to 255): a coarse, monotonic disambiguator.

    R and G are linear away from their kinks (``x mod 255 == 0``), so a box or
    anti-aliasing filter of any width leaves them unchanged there: a pixel read at any
    pyramid level and resized still shows the level-0 position of its centre, which is
    what the exact-geometry test measures (to a fraction of a level-0 pixel).

    Returns
    -------
    numpy.ndarray
        float64 ``broadcast(x, y).shape + (3,)``.
    """
    xa, ya = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
    return np.stack([_triangle(xa), _triangle(ya), np.clip((xa + ya) / 32.0, 0, 255)], axis=-1)


def write_coordinate_slide(
    path: str | Path,
    width: int,
    height: int,
    *,
    mpp: float = 0.5,
    kind: str = "tiff",
    n_levels: int = 3,
    tile: int = 256,
    level_step: int = 2,
    compression: str = "zlib",
) -> Path:
    """Write a lossless slide whose pixels encode their own level-0 coordinates.

    Level-0 pixel ``(r, c)`` holds ``round(coordinate_values(c + 0.5, r + 0.5))``; a
    level-``k`` pixel holds the rounded mean of the unrounded values over its
    ``d x d`` level-0 block (``d = level_step**k``), i.e. an exact box-filtered
    pyramid. Choose ``width`` and ``height`` divisible by ``level_step**(n_levels-1)``
    so that readers report exact integer downsamples.

    Parameters
    ----------
    path
        Output file.
    width, height
        Level-0 size.
    mpp
        Spacing written to the file.
    kind
        ``"tiff"`` (generic) or ``"svs"``.
    n_levels, tile, level_step
        Pyramid layout.
    compression
        Lossless: ``"zlib"`` (default) or ``"none"``.
    """
    if compression.lower() == "jpeg":
        raise ValueError("a coordinate slide must be lossless; use compression='zlib' or 'none'")

    def render(x: int, y: int, w: int, h: int, ds: float) -> npt.NDArray[np.uint8]:
        s = max(1, round(ds))
        if abs(s - ds) > 1e-9 or s == 1:
            cx = x * ds + (np.arange(w) + 0.5) * ds
            cy = y * ds + (np.arange(h) + 0.5) * ds
            v = coordinate_values(cx[None, :], cy[:, None])
        else:
            cx = x * ds + np.arange(w * s) + 0.5
            cy = y * ds + np.arange(h * s) + 0.5
            v = coordinate_values(cx[None, :], cy[:, None]).reshape(h, s, w, s, 3).mean(axis=(1, 3))
        return np.clip(np.rint(v), 0, 255).astype(np.uint8)

    def has_content(
        x0s: npt.NDArray[np.float64], y0: float, w: float, h: float
    ) -> npt.NDArray[np.bool_]:
        return np.ones(x0s.shape, dtype=bool)

    return _write_pyramid(
        Path(path),
        width,
        height,
        mpp,
        render,
        has_content,
        None,
        kind=kind,
        tile=tile,
        compression=compression,
        n_levels=n_levels,
        level_step=level_step,
        write_mpp=True,
    )


# ----------------------------------------------------------------------------- demo


def _blob(
    cx: float, cy: float, r: float, rng: np.random.Generator, n: int = 72, rough: float = 0.18
) -> Polygon:
    """An irregular closed polygon: a circle with a few random low harmonics."""
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    rad = np.ones(n)
    for k in range(2, 6):
        amp = rough * rng.uniform(0.3, 1.0) / (k - 1)
        rad += amp * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    ax = rng.uniform(0.8, 1.25)
    xs = cx + r * ax * rad * np.cos(t)
    ys = cy + r / ax * rad * np.sin(t)
    return tuple((round(float(a), 2), round(float(b), 2)) for a, b in zip(xs, ys, strict=True))


def demo_slide_spec() -> SyntheticSlide:
    """The fixed demo slide: 6144 x 4096 px at 0.5 um/px, three tissue pieces, three tumours."""
    rng = np.random.default_rng(20240402)
    tissue = (
        _blob(1500.0, 1700.0, 1050.0, rng),
        _blob(3900.0, 2300.0, 1250.0, rng),
        _blob(5350.0, 1150.0, 560.0, rng),
    )
    tumour = (
        _blob(1350.0, 1600.0, 420.0, rng, rough=0.25),
        _blob(4250.0, 2650.0, 520.0, rng, rough=0.25),
        _blob(3500.0, 1750.0, 260.0, rng, rough=0.25),
    )
    return SyntheticSlide(width=6144, height=4096, mpp=0.5, tissue=tissue, tumour=tumour, seed=7)


def write_demo_slide(path: str | Path) -> Path:
    """Write the demo slide (:func:`demo_slide_spec`) as a JPEG Aperio SVS."""
    return write_slide(demo_slide_spec(), path, kind="svs", compression="jpeg")


def sample_patches(
    spec: SyntheticSlide,
    n: int,
    patch_px: int,
    spacing: float,
    *,
    seed: int = 0,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Labelled training patches from inside the tissue of a synthetic slide.

    Parameters
    ----------
    spec
        The slide.
    n
        Number of patches; ``n // 2`` are tumour (label 1), the rest normal (label 0).
    patch_px
        Patch width = height in pixels.
    spacing
        Patch spacing in um/px.
    seed
        Seed of the local random generator choosing the patch centres.

    Returns
    -------
    patches, labels
        uint8 ``(n, patch_px, patch_px, 3)`` and int64 ``(n,)``; label 1 means the
        patch centre lies in tumour, 0 in normal tissue.
    """
    rng = np.random.default_rng(seed)
    geom = _Geometry(spec)
    if geom.tissue is None:
        raise ValueError("the synthetic slide has no tissue to sample patches from")
    ds = spacing / spec.mpp
    grid_ds = max(8.0, ds)
    tis = tissue_mask(spec, grid_ds)
    tum = tumour_mask(spec, grid_ds) & tis
    nor = tis & ~tum
    n_tum = n // 2
    wanted = {1: n_tum, 0: n - n_tum}
    pools = {1: np.argwhere(tum), 0: np.argwhere(nor)}
    patches = np.empty((n, patch_px, patch_px, 3), np.uint8)
    labels = np.empty(n, np.int64)
    i = 0
    for label in (1, 0):
        pool = pools[label]
        if wanted[label] and len(pool) == 0:
            raise ValueError(f"the synthetic slide has no {'tumour' if label else 'normal'} tissue")
        got = 0
        tries = 0
        while got < wanted[label]:
            tries += 1
            if tries > 100 * max(1, wanted[label]):
                raise ValueError("could not sample enough patches; the regions are too small")
            r, c = pool[rng.integers(len(pool))]
            cx = (c + rng.uniform()) * grid_ds
            cy = (r + rng.uniform()) * grid_ds
            pt = shapely.Point(cx, cy)
            in_tum = geom.tumour is not None and bool(shapely.intersects(geom.tumour, pt))
            if not bool(shapely.intersects(geom.tissue, pt)) or in_tum != bool(label):
                continue
            half = patch_px * ds / 2.0
            patches[i] = _render(
                spec, geom, cx - half, cy - half, patch_px, patch_px, ds, 2 if ds >= 2 else 1
            )
            labels[i] = label
            i += 1
            got += 1
    order = rng.permutation(n)
    return patches[order], labels[order]
