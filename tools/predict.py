"""Top-k predictions of a trained model: ``python tools/predict.py CHECKPOINT INPUT... [--window SECONDS]``.

INPUT: videos, folders (searched recursively) or list files (one path per line).  The views are
``tools/test.py``'s (``--views CLIPSxCROPS`` to change them); ``--out FILE.jsonl|.csv`` writes the results.
Same as ``iresvid predict``.
"""

from __future__ import annotations

import sys

from iresvid.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    return cli_main(["predict", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
