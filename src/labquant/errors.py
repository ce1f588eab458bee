"""User-facing errors: caught at the entry points and printed as one line, never a traceback."""

from __future__ import annotations

import errno
from pathlib import Path


class UserError(Exception):
    """A mistake in the user's settings or files; the message names the setting and the fix."""

    exit_code = 2  # the entry points' exit status for it: 2, a usage error, before any work


class ConfigError(UserError, ValueError):
    """A config value that cannot work (negative learning rate, unknown model, ...)."""


class DataError(UserError):
    """Missing, truncated or corrupt data files."""


class TrainingDiverged(UserError):
    """The loss became NaN or inf; almost always a learning rate too high for the setup."""


class RunFolderInUse(UserError):
    """Another labquant process holds the run folder's lock: two runs would interleave files."""


class ArtifactWriteError(UserError):
    """Writing a result failed in the file system (full disk, quota, read-only mount): one line
    naming the file and the cause, exit 1 (the work began; the settings were fine)."""

    exit_code = 1

    def __init__(self, path: Path | str | None, cause: OSError) -> None:
        self.path, self.cause = path, cause
        reason = (cause.strerror or str(cause) or type(cause).__name__).lower()
        where = f" while writing {path}" if path else ""
        fix = "free space there" if cause.errno in (errno.ENOSPC, errno.EDQUOT) else "check it"
        fix = f"; {fix} and rerun (resume=true continues from the last good checkpoint)"
        super().__init__(f"{reason}{where}{fix}")
