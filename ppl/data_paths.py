"""Where the shared reference data lives (posteriordb, sbibm); never copied into the repo.

Looked up in ``$PPL_REFERENCE_DATA`` first, then in ``shared/data`` beside the repository
(``../shared/data`` from the repository root).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["reference_data_dir", "ReferenceDataMissing"]


class ReferenceDataMissing(FileNotFoundError):
    """The shared reference data could not be found."""


def reference_data_dir(subdir: str | None = None) -> Path:
    """The reference data directory (or one of its subdirectories).

    Raises:
        ReferenceDataMissing: naming the places looked in.
    """
    candidates = []
    if os.environ.get("PPL_REFERENCE_DATA"):
        candidates.append(Path(os.environ["PPL_REFERENCE_DATA"]))
    here = Path(__file__).resolve()
    for parent in [Path.cwd(), *Path.cwd().parents, *here.parents]:
        candidates.append(parent.parent / "shared" / "data")
        candidates.append(parent / "shared" / "data")
    for candidate in candidates:
        path = candidate / subdir if subdir else candidate
        if path.is_dir():
            return path
    raise ReferenceDataMissing(
        f"Reference data{' ' + subdir if subdir else ''} not found: set PPL_REFERENCE_DATA or "
        "place it at ../shared/data beside the repository."
    )
