"""What the benchmark scripts share: writing their results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(path: Path, results: dict[str, Any], quick: bool) -> None:
    """Write ``results`` as JSON to ``path``, saying so (and that quick figures mean nothing)."""
    if quick:
        print("quick run: sizes too small for the targets to mean anything")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"written {path}")
