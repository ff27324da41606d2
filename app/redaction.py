"""Server paths out of what the API shows: model records and error messages name files relative to the
folders a user knows (the data root, the var folder, the project), never the machine's layout."""

import re
from collections.abc import Mapping
from typing import Any

from app.config import PROJECT_ROOT, Settings

#: An absolute path's folders: a "/" not inside a word, a relative path or a label, then "name/" parts.
_FOLDERS = re.compile(r"(?<![\w.~>-])/(?:[^/\s,;=:'\"()<>]+/)+")


def path_labels(settings: Settings) -> dict[str, str]:
    """Folder -> how the API names it, the deepest first so the most specific one wins."""
    labels = {
        str(settings.resolved_data_root): "<data root>",
        str(settings.jobs_dir): "<jobs>",
        str(settings.models_dir): "<models>",
        str(settings.var_dir): "<var>",
        str(PROJECT_ROOT): ".",
    }
    return dict(sorted(labels.items(), key=lambda item: len(item[0]), reverse=True))


def redact_paths(text: str, labels: Mapping[str, str]) -> str:
    """``text`` with known folders named by their labels and the folders of any other absolute path
    left out (its file name stays)."""
    for folder, label in labels.items():
        text = re.sub(re.escape(folder.rstrip("/")) + r"(?=/|\b)", label, text)
    return _FOLDERS.sub("", text)


def redact(value: Any, labels: Mapping[str, str]) -> Any:
    """:func:`redact_paths` over every string in a JSON-like value."""
    if isinstance(value, str):
        return redact_paths(value, labels)
    if isinstance(value, Mapping):
        return {key: redact(item, labels) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact(item, labels) for item in value]
    return value
