"""The project's error family. Vendor errors (NVML, drivers) are mapped to these at the edge."""


class AccountingError(Exception):
    """Base of every error WattLedger raises on purpose."""


class NotFound(AccountingError):
    """An id that names nothing (the API answers 404)."""

    def __init__(self, what: str, ident: object) -> None:
        super().__init__(f"{what} {ident!r} not found")
        self.what = what
        self.ident = ident


class InvalidInput(AccountingError):
    """Input that is well-formed but makes no sense (the API answers 422 naming `field`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Conflict(AccountingError):
    """The request contradicts stored state (the API answers 409)."""


class GpuError(AccountingError):
    """A GPU could not be read. `uuid` is None when the whole backend failed."""

    def __init__(self, message: str, uuid: str | None = None) -> None:
        super().__init__(message)
        self.uuid = uuid


class GpuNotSupported(GpuError):
    """The GPU or driver does not support this query (NVML_ERROR_NOT_SUPPORTED)."""


class GpuLost(GpuError):
    """The GPU fell off the bus or stopped answering (NVML_ERROR_GPU_IS_LOST)."""


class GpuNoPermission(GpuError):
    """The process lacks permission for this query (NVML_ERROR_NO_PERMISSION)."""


class GpuBackendUnavailable(GpuError):
    """No driver or library: NVML_ERROR_LIBRARY_NOT_FOUND, NVML_ERROR_DRIVER_NOT_LOADED."""


class GpuUnknownError(GpuError):
    """Any other NVML failure (NVML_ERROR_UNKNOWN and friends)."""
