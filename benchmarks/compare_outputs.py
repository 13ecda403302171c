"""Compare two output folders of the pipeline (e.g. the demo before and after a change).

Every file must be byte-identical except:

* ``run.json`` / ``batch-summary.json``: compared as JSON after dropping what changes
  from run to run (timings, timestamps, package versions, tiles per second) and the
  version fields (``wsi_saliency_version``, ``run_record_version``: the record's layout
  version, added with the typed run record), and after replacing each folder's own path
  by ``OUT``;
* ``*.ome.tif``: compared level by level as arrays, plus the OME-XML with its random
  ``UUID`` removed.

Prints one line per file and exits 1 when anything differs. Run::

    .venv/bin/python benchmarks/compare_outputs.py /tmp/before /tmp/after
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

VOLATILE = {
    "timings_s",
    "timings",
    "started",
    "finished",
    "versions",
    "tiles_per_second",
    "wsi_saliency_version",
    "run_record_version",
}


def _scrub(obj: Any, root: str) -> Any:
    if isinstance(obj, dict):
        return {
            k: _scrub(v, root)
            for k, v in obj.items()
            if k not in VOLATILE
        }
    if isinstance(obj, list):
        return [_scrub(v, root) for v in obj]
    if isinstance(obj, str):
        return obj.replace(root, "OUT")
    return obj


def _same_json(a: Path, b: Path, ra: Path, rb: Path) -> bool:
    ja = _scrub(json.loads(a.read_text()), str(ra))
    jb = _scrub(json.loads(b.read_text()), str(rb))
    return bool(ja == jb)


def _same_tiff(a: Path, b: Path) -> bool:
    with tifffile.TiffFile(a) as ta, tifffile.TiffFile(b) as tb:
        uuid = re.compile(r'UUID="[^"]*"')
        if uuid.sub("", ta.ome_metadata or "") != uuid.sub("", tb.ome_metadata or ""):
            return False
        la, lb = ta.series[0].levels, tb.series[0].levels
        if len(la) != len(lb):
            return False
        return all(
            np.array_equal(x.asarray(), y.asarray(), equal_nan=True)
            for x, y in zip(la, lb, strict=True)
        )


def main() -> int:
    ra, rb = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    fa = sorted(p.relative_to(ra) for p in ra.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(rb) for p in rb.rglob("*") if p.is_file())
    bad = 0
    if fa != fb:
        print(f"file lists differ: only before {set(fa) - set(fb)}, only after {set(fb) - set(fa)}")
        bad += 1
    for rel in fa:
        a, b = ra / rel, rb / rel
        if not b.exists():
            continue
        if a.read_bytes() == b.read_bytes():
            how = "byte-identical"
        elif rel.suffix == ".json":
            ok = _same_json(a, b, ra, rb)
            how = "same JSON apart from timings/version fields/paths" if ok else "DIFFERENT JSON"
            bad += not ok
        elif rel.name.endswith(".ome.tif"):
            ok = _same_tiff(a, b)
            how = "same arrays (every level) and OME-XML apart from UUID" if ok else "DIFFERENT"
            bad += not ok
        else:
            how = "DIFFERENT bytes"
            bad += 1
        print(f"{rel}: {how}")
    print(f"{len(fa)} files, {bad} different")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
