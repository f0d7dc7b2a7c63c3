"""A benchmark's report: printed, and written as JSON to --out when given."""

import json
from pathlib import Path


def emit(report: dict, out: Path | None) -> None:
    text = json.dumps(report, indent=1)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
