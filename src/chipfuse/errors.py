"""User-facing errors: each says what is wrong, where, and what would fix it."""


class ChipfuseError(Exception):
    """An error the CLI prints as one clear message, never as a traceback."""


class SpecError(ChipfuseError):
    """A hardware or model description is invalid."""


class FitError(ChipfuseError):
    """A model does not fit the system's memory."""
