"""``python -m app``: the same as the ``trashcam`` command."""

from app.cli import main

main()
