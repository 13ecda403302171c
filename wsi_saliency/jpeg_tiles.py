"""Raw JPEG tiles of a TIFF pyramid level, decoded on the GPU (nvJPEG) or the CPU.

On a GPU the slide's JPEG decoding can become the bottleneck of the job. This module
reads the compressed bytes of a level's tiles with :mod:`tifffile` (no decoding on the
CPU) and decodes whole batches of them with ``torchvision.io.decode_jpeg(...,
device="cuda")`` (nvJPEG), falling back per tile to tifffile's own decoder
(libjpeg-turbo through imagecodecs) where the GPU path is not available or cannot decode
a tile exactly:

* no CUDA device, or torchvision missing or built without GPU decoding;
* a level that is not tiled, not JPEG, not 8-bit 3-sample contiguous, or stored with
  ``photometric=RGB`` (Aperio-style JPEG without colour transform: nvJPEG would apply
  the YCbCr conversion; only ``photometric=YCbCr`` tiles go to the GPU);
* any tile the GPU decoder rejects.

:func:`read_level_region` assembles a level region from the tiles that cover it (white
outside the level), so the region is what tifffile returns for the same window, within
JPEG decoder tolerance. Tiles are read at their pyramid level; resampling to the model's
spacing stays with :mod:`wsi_saliency.tiling`.

Not verified on a GPU in this project's tests: the tests run the CPU path and the
fallback decisions.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

__all__ = ["JpegLevel", "find_level_page", "gpu_jpeg_available", "read_level_region",
           "read_regions"]

_JPEG = 7
_PHOTOMETRIC_YCBCR = 6


def gpu_jpeg_available(device: torch.device) -> bool:
    """Whether ``torchvision.io.decode_jpeg`` can decode on ``device`` (a CUDA device).

    Parameters
    ----------
    device
        The device tiles would be decoded on.

    Returns
    -------
    bool
        False for a non-CUDA device, without CUDA, or without torchvision.
    """
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        from torchvision.io import decode_jpeg  # noqa: F401, PLC0415 - optional dependency
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class _Layout:
    width: int
    height: int
    tile_w: int
    tile_h: int
    across: int
    offsets: tuple[int, ...]
    counts: tuple[int, ...]
    jpegtables: bytes | None
    ycbcr_jpeg: bool
    gpu_ok: bool


class JpegLevel:
    """One tiled pyramid level of a TIFF file: raw tile bytes and batched decoding.

    Parameters
    ----------
    path
        The TIFF / SVS file.
    page
        Index of the level's page in ``tifffile.TiffFile(path).pages`` (0 = level 0).
    device
        Where tiles are decoded: a CUDA device uses nvJPEG when :func:`gpu_jpeg_available`
        and the level's tiles are YCbCr JPEG; anything else decodes on the CPU.

    Raises
    ------
    ValueError
        The page is not tiled or not 8-bit RGB with contiguous samples.
    """

    def __init__(self, path: str | Path, page: int = 0,
                 device: torch.device | str = "cpu") -> None:
        import tifffile  # noqa: PLC0415 - heavy import kept local

        self._path = Path(path)
        self._device = torch.device(device)
        self._tif = tifffile.TiffFile(str(self._path))
        self._lock = threading.Lock()
        try:
            pg = self._tif.pages[page]
            assert isinstance(pg, tifffile.TiffPage)
            if not pg.is_tiled:
                raise ValueError(f"{self._path}: page {page} is not tiled")
            if pg.samplesperpixel < 3 or pg.bitspersample != 8 or pg.planarconfig != 1:
                raise ValueError(f"{self._path}: page {page} is not 8-bit RGB with "
                                 "contiguous samples")
            self._page = pg
            ycbcr_jpeg = (
                int(pg.compression) == _JPEG
                and int(pg.photometric) == _PHOTOMETRIC_YCBCR
                and pg.samplesperpixel == 3
            )
            gpu_ok = ycbcr_jpeg and gpu_jpeg_available(self._device)
            self._layout = _Layout(
                width=int(pg.imagewidth), height=int(pg.imagelength),
                tile_w=int(pg.tilewidth), tile_h=int(pg.tilelength),
                across=math.ceil(pg.imagewidth / pg.tilewidth),
                offsets=tuple(int(v) for v in pg.dataoffsets),
                counts=tuple(int(v) for v in pg.databytecounts),
                jpegtables=pg.jpegtables, ycbcr_jpeg=ycbcr_jpeg, gpu_ok=gpu_ok,
            )
        except Exception:
            self._tif.close()
            raise

    # ------------------------------------------------------------------ facts
    @property
    def uses_gpu(self) -> bool:
        """Whether tiles of this level are decoded with nvJPEG."""
        return self._layout.gpu_ok

    @property
    def ycbcr_jpeg(self) -> bool:
        """Whether the level's tiles are 3-sample YCbCr JPEG (what nvJPEG decodes right)."""
        return self._layout.ycbcr_jpeg

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of the level."""
        return self._layout.height, self._layout.width

    @property
    def tile_shape(self) -> tuple[int, int]:
        """``(tile height, tile width)``."""
        return self._layout.tile_h, self._layout.tile_w

    def close(self) -> None:
        """Close the file."""
        self._tif.close()

    def __enter__(self) -> JpegLevel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ bytes
    def raw_tile(self, ty: int, tx: int) -> bytes:
        """The stored bytes of tile ``(ty, tx)`` (empty for a tile that is not stored)."""
        lay = self._layout
        k = ty * lay.across + tx
        if lay.counts[k] == 0:
            return b""
        fh = self._tif.filehandle
        with self._lock:
            fh.seek(lay.offsets[k])
            return bytes(fh.read(lay.counts[k]))

    def jpeg_stream(self, raw: bytes) -> bytes:
        """A complete JPEG stream: the level's shared JPEGTables spliced into a tile."""
        tables = self._layout.jpegtables
        if not tables or not raw:
            return raw
        return tables[:-2] + raw[2:]  # tables without EOI + tile without SOI

    # ------------------------------------------------------------------ decode
    def _cpu_decode(self, raw: bytes, k: int) -> npt.NDArray[np.uint8]:
        lay = self._layout
        if not raw:
            return np.full((lay.tile_h, lay.tile_w, 3), 255, np.uint8)
        seg = self._page.decode(raw, k, jpegtables=lay.jpegtables)[0]
        assert seg is not None
        arr = np.asarray(seg).reshape(lay.tile_h, lay.tile_w, -1)
        return np.ascontiguousarray(arr[..., :3], dtype=np.uint8)

    def decode_tiles(self, keys: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        """Decode tiles ``(ty, tx)`` into ``(tile_h, tile_w, 3)`` uint8 tensors.

        On the GPU path the whole list is decoded in one batched nvJPEG call and the
        tensors are on the device; a failure there decodes every tile on the CPU
        instead. CPU tensors otherwise.
        """
        lay = self._layout
        raws = [self.raw_tile(ty, tx) for ty, tx in keys]
        if lay.gpu_ok and all(raws):
            try:
                return self._gpu_decode(raws)
            except RuntimeError:
                pass  # fall back to the CPU decoder for this batch
        return [
            torch.from_numpy(self._cpu_decode(r, ty * lay.across + tx))
            for r, (ty, tx) in zip(raws, keys, strict=True)
        ]

    def _gpu_decode(self, raws: list[bytes]) -> list[torch.Tensor]:  # pragma: no cover - GPU
        from torchvision.io import ImageReadMode, decode_jpeg  # noqa: PLC0415

        data = [torch.frombuffer(bytearray(self.jpeg_stream(r)), dtype=torch.uint8) for r in raws]
        out = decode_jpeg(data, mode=ImageReadMode.RGB, device=self._device)
        tiles = out if isinstance(out, list) else [out]
        return [t.permute(1, 2, 0) for t in tiles]  # (3, h, w) -> (h, w, 3)


def find_level_page(path: str | Path, width: int, height: int) -> int | None:
    """Index of the first tiled page of a TIFF file that is ``width x height`` px.

    Pyramid levels are tiled pages; an SVS thumbnail or label (stripped) is skipped.

    Parameters
    ----------
    path
        The TIFF / SVS file.
    width, height
        The level's size.

    Returns
    -------
    int or None
        None for a file tifffile cannot read or without such a page.
    """
    import tifffile  # noqa: PLC0415 - heavy import kept local

    try:
        with tifffile.TiffFile(str(path)) as tif:
            for k, pg in enumerate(tif.pages):
                if (isinstance(pg, tifffile.TiffPage) and pg.is_tiled
                        and (int(pg.imagewidth), int(pg.imagelength)) == (width, height)):
                    return k
    except Exception:  # noqa: BLE001 - not a TIFF tifffile reads: the CPU path reads it
        return None
    return None


def _covering(level: JpegLevel, x: int, y: int, width: int, height: int
              ) -> list[tuple[int, int]]:
    lh, lw = level.shape
    th, tw = level.tile_shape
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + width, lw), min(y + height, lh)
    if x1 <= x0 or y1 <= y0:
        return []
    return [(ty, tx) for ty in range(y0 // th, (y1 - 1) // th + 1)
            for tx in range(x0 // tw, (x1 - 1) // tw + 1)]


def _paste(level: JpegLevel, out: torch.Tensor, x: int, y: int,
           tiles: dict[tuple[int, int], torch.Tensor]) -> None:
    lh, lw = level.shape
    th, tw = level.tile_shape
    height, width = out.shape[0], out.shape[1]
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + width, lw), min(y + height, lh)
    for (ty, tx) in _covering(level, x, y, width, height):
        t = tiles[(ty, tx)]
        ty0, tx0 = ty * th, tx * tw
        sy0, sy1 = max(y0, ty0), min(y1, ty0 + th)
        sx0, sx1 = max(x0, tx0), min(x1, tx0 + tw)
        out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = t[sy0 - ty0 : sy1 - ty0, sx0 - tx0 : sx1 - tx0]


def read_regions(level: JpegLevel, boxes: Sequence[tuple[int, int, int, int]],
                 *, fill: int = 255) -> torch.Tensor:
    """Several equal-sized regions of a level, each compressed tile decoded once.

    The tiles under all the regions are decoded in one :meth:`JpegLevel.decode_tiles`
    call (one batched nvJPEG call on the GPU path), then the regions are assembled.

    Parameters
    ----------
    level
        The level.
    boxes
        ``(x, y, width, height)`` in level pixels, all of the same width and height.
    fill
        Value of the pixels outside the level.

    Returns
    -------
    torch.Tensor
        uint8 ``(len(boxes), height, width, 3)`` on the decode device.
    """
    if not boxes:
        raise ValueError("read_regions needs at least one box")
    sizes = {(int(w), int(h)) for _x, _y, w, h in boxes}
    if len(sizes) != 1:
        raise ValueError(f"read_regions needs boxes of one size, got {sorted(sizes)}")
    ((width, height),) = sizes
    keys = sorted({k for x, y, w, h in boxes for k in _covering(level, x, y, w, h)})
    decoded = dict(zip(keys, level.decode_tiles(keys), strict=True))
    device: Any = next(iter(decoded.values())).device if decoded else "cpu"
    out = torch.full((len(boxes), height, width, 3), fill, dtype=torch.uint8, device=device)
    for j, (x, y, _w, _h) in enumerate(boxes):
        _paste(level, out[j], int(x), int(y), decoded)
    return out


def read_level_region(level: JpegLevel, x: int, y: int, width: int, height: int,
                      *, fill: int = 255) -> torch.Tensor:
    """A ``(height, width, 3)`` uint8 region of a level, from the tiles that cover it.

    Parameters
    ----------
    level
        The level.
    x, y
        Top-left corner in level pixels (may be negative or beyond the level).
    width, height
        Region size in level pixels.
    fill
        Value of the pixels outside the level (white, as the readers pad).

    Returns
    -------
    torch.Tensor
        On the level's decode device (the GPU with nvJPEG, else the CPU).
    """
    lh, lw = level.shape
    th, tw = level.tile_shape
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + width, lw), min(y + height, lh)
    keys = [
        (ty, tx)
        for ty in range(y0 // th, (y1 - 1) // th + 1)
        for tx in range(x0 // tw, (x1 - 1) // tw + 1)
    ] if x1 > x0 and y1 > y0 else []
    tiles = level.decode_tiles(keys)
    device: Any = tiles[0].device if tiles else "cpu"
    out = torch.full((height, width, 3), fill, dtype=torch.uint8, device=device)
    for (ty, tx), t in zip(keys, tiles, strict=True):
        ty0, tx0 = ty * th, tx * tw
        sy0, sy1 = max(y0, ty0), min(y1, ty0 + th)
        sx0, sx1 = max(x0, tx0), min(x1, tx0 + tw)
        out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = t[sy0 - ty0 : sy1 - ty0, sx0 - tx0 : sx1 - tx0]
    return out
