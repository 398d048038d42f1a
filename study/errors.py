"""User-facing errors: one line that names the problem and the fix; the CLI exits 2 on them."""


class StudyError(Exception):
    """A problem the user can fix (bad input, missing data, bad configuration)."""

    exit_code = 2


class DataError(StudyError):
    """A Fashion-MNIST file is missing, truncated, corrupt or not the canonical one."""


class ConfigError(StudyError):
    """An unknown pipeline, profile or parameter, or a malformed pipeline YAML."""


class RegistryError(StudyError):
    """The Model Registry could not be read or written; the champion alias was left alone."""


def first_line(exc: BaseException) -> str:
    """An exception's first message line (its type name when it has no message)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
