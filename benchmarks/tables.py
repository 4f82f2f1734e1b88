"""What every benchmark script does with its figures: write them as JSON, print them as a table."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def print_table(columns: list[str], rows: list[list[str]]) -> None:
    """A Markdown table, ready to paste into the README."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(row) + " |")
