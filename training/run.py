"""``python -m training.run``: the ``trashcam-train`` command (:mod:`training.cli`) by its older name."""

import sys

from training.cli import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
