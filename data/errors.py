"""Every error a user's input can cause, defined in one place.

Why: train.py, the index CLI and app.py's start-up all answer a bad input (a missing folder, a
damaged file, another model's index, weights that are not here) with one plain line and exit
status 2, and anything else with its traceback, because anything else is a bug. They agree on
which is which by catching :data:`REPORTED`. The modules that raise these errors import them from
here (and re-export them, so ``from model.checkpoint import CheckpointError`` keeps working).
"""
from __future__ import annotations


class InputError(Exception):
    """Base of the errors caused by inputs (files, options, weights), not by a bug."""


class ImageLoadError(InputError, ValueError):
    """An input that cannot be read as a radiograph; the message is shown to the user."""


class ManifestError(InputError, ValueError):
    """The manifest as a whole cannot be used (missing file or columns)."""


class BackboneUnavailableError(InputError, RuntimeError):
    """The requested weights cannot be loaded here (not cached, hub unreachable, folder incomplete)."""


class CheckpointError(InputError, RuntimeError):
    """A run folder that cannot be used: missing, incomplete, corrupt or for another backbone."""


class IndexLoadError(InputError):
    """Base of the errors that stop an index folder from being loaded."""


class IndexMismatchError(IndexLoadError):
    """The index was built with another backbone, head or embedding size than the encoder."""


class IndexCorruptError(IndexLoadError):
    """A file of the index is missing, truncated, altered or inconsistent with the manifest."""


class StoreSchemaError(IndexLoadError):
    """The metadata store was written by older code (another schema version): rebuild the index."""


class IndexRefusedError(InputError, ValueError):
    """The index's own films would fail its trust checks (trust.report): not published."""


class ShardMismatchError(InputError, ValueError):
    """The shard folder was written for another backbone, preprocessing or study list."""


class BundleError(InputError, ValueError):
    """A bundle that cannot be opened (missing, not a bundle, unreachable)."""


class BundleCorruptError(BundleError):
    """A bundle file is missing or differs from its checksum in bundle.json."""


class PacsError(InputError, RuntimeError):
    """A PACS that cannot be used: unreachable, refusing the credentials, or failing mid-way (data.dicomweb)."""


# What the entry points report as one line (exit 2): our input errors and the OS's "no such file".
REPORTED: tuple[type[BaseException], ...] = (InputError, FileNotFoundError, NotADirectoryError, PermissionError)
# Loading a run or an index (index CLI, app start-up): any ValueError/OSError there comes from the files given.
LOAD_ERRORS: tuple[type[BaseException], ...] = REPORTED + (ValueError, OSError)


def one_line(exc: BaseException) -> str:
    """``error: <message>`` on one line (at most ~500 characters), as every entry point prints it."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return "error: " + (text if len(text) <= 500 else text[:497] + "...")
