"""Server paths out of what the API shows: model records and error messages name files relative to the
folders a user knows (the data root, the var folder, the project), never the machine's layout."""

from core.settings import PROJECT_ROOT, Settings


def path_labels(settings: Settings) -> dict[str, str]:
    """Folder -> how the API names it (``models.files.redact_paths`` tries the deepest first); files of
    the project are named relative to it."""
    return {
        str(settings.resolved_data_root): "<data root>",
        str(settings.jobs_dir): "<jobs>",
        str(settings.models_dir): "<models>",
        str(settings.artifacts): "<artifacts>",
        str(settings.var_dir): "<var>",
        str(PROJECT_ROOT): "",
    }
