"""Run and checkpoint locations: local paths or ``gs://`` URLs, as one ``etils.epath.Path`` type."""

from __future__ import annotations

import os

from etils import epath


def is_remote(path) -> bool:
    """A URL (``gs://``, ``s3://``): an object store, where files cannot be appended to."""
    return "://" in str(path)


def as_path(directory) -> epath.Path:
    """A local (made absolute) or ``gs://`` path; rejects a URL that ``pathlib`` has already mangled."""
    text = os.fspath(directory)
    if "://" not in text and text.split("/", 1)[0] in ("gs:", "s3:"):
        raise ValueError(f"checkpoint directory {text!r}: a URL whose '//' was collapsed (pathlib.Path of "
                         "'gs://...'); pass the string or an etils.epath.Path")
    return epath.Path(text) if is_remote(text) else epath.Path(os.path.abspath(text))
