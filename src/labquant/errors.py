"""User-facing errors: caught at the entry points and printed as one line, never a traceback."""


class UserError(Exception):
    """A mistake in the user's settings or files; the message names the setting and the fix."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work (negative learning rate, unknown model, ...)."""


class DataError(UserError):
    """Missing, truncated or corrupt data files."""


class TrainingDiverged(UserError):
    """The loss became NaN or inf; almost always a learning rate too high for the setup."""
