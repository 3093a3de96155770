"""Python client and ``lungct`` command line of the lung-CT classifier API.

Self-contained (needs ``requests``; ``rich`` for progress bars when installed):
it imports nothing from the service, so it can be installed on any machine.
"""

from client.api import (
    ApiError,
    AuthError,
    Conflict,
    ConnectionFailed,
    Job,
    LungCTClient,
    LungCTError,
    NotFound,
    NotSupported,
    SliceResult,
    Upload,
)

__all__ = [
    "ApiError",
    "AuthError",
    "Conflict",
    "ConnectionFailed",
    "Job",
    "LungCTClient",
    "LungCTError",
    "NotFound",
    "NotSupported",
    "SliceResult",
    "Upload",
]
