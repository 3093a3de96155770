"""The two ways an upload can be refused, kept apart because they are handled apart.

:class:`InvalidUpload` rejects the whole upload (the API answers 4xx before a job
exists; the worker fails the job with the message). :class:`SliceError` marks one
slice as bad while the rest of the job goes on. Messages are shown to the client,
so they say what is wrong in plain words and never quote patient identifiers.
"""

from __future__ import annotations


class InvalidUpload(ValueError):
    """The upload as a whole cannot be processed; the message is shown to the client."""


class SliceError(Exception):
    """One slice cannot be decoded; recorded on that slice, the job continues."""


class LimitExceeded(Exception):
    """A streaming size limit was hit while reading a member (internal)."""
