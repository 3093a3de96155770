"""Request bodies under guard: an idle timeout, and malformed framing as a 4xx.

Two ways a request body can hurt the API, both seen in the hostile battery
(issue 21):

- a client sends its headers and a few body bytes, then nothing: the read
  waits forever. Here every read of the body may wait at most
  ``UPLOAD_IDLE_TIMEOUT_S`` for the next bytes (a socket timeout, so a slow
  but progressing upload is never cut off); a stalled one is answered 408.
- a malformed chunked body (``zz\\r\\n``, a negative size, a missing chunk
  terminator): gunicorn's parser raises while the form parser reads, and
  the exception escaped as a 500. It is answered 400 instead.

Either way the connection is closed after the answer (its framing is lost).
The guard wraps ``wsgi.input`` in a WSGI middleware, so it covers every route
and every worker class; without gunicorn (the Flask test client) the input
is passed through untouched.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from apiflask import HTTPError
from gunicorn.http.errors import NoMoreData, ParseException

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class GuardedInput:
    """``wsgi.input`` whose reads answer 408/400 instead of hanging or raising a 500."""

    def __init__(self, stream: Any, sock: Any, idle_s: float) -> None:
        self._stream = stream
        self._sock = sock
        self._idle_s = idle_s

    def read(self, size: int | None = None) -> bytes:
        return self._guarded(self._stream.read, size)

    def readline(self, size: int | None = None) -> bytes:
        return self._guarded(self._stream.readline, size)

    def readlines(self, hint: int | None = None) -> list[bytes]:
        return list(self._guarded(self._stream.readlines, hint))

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def _guarded(self, read: Callable[[Any], Any], arg: Any) -> Any:
        try:
            return read(arg)
        except TimeoutError:
            self._give_up()
            raise HTTPError(
                408,
                f"the upload sent nothing for {self._idle_s:g} s (UPLOAD_IDLE_TIMEOUT_S); "
                "the connection is closed, please send it again",
            ) from None
        except NoMoreData:
            self._give_up()
            raise HTTPError(400, "the client closed the connection mid-body") from None
        except ParseException as exc:
            self._give_up()
            raise HTTPError(400, f"malformed request body: {exc}") from None

    def _give_up(self) -> None:
        """No more reads on this connection: the answer is the last thing sent on it.

        gunicorn would otherwise read on for the next request (and hit the same
        stall or the same malformed bytes); an EOF makes it close quietly.
        """
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RD)


class BodyGuard:
    """WSGI middleware: give the request body a read timeout and map framing errors to 4xx."""

    def __init__(self, app: WSGIApp, idle_s: float) -> None:
        self.app = app
        self.idle_s = idle_s

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        sock = environ.get("gunicorn.socket")  # gevent's or the plain socket class
        if sock is not None and hasattr(sock, "settimeout"):
            sock.settimeout(self.idle_s)  # every recv and send on this connection
            environ["wsgi.input"] = GuardedInput(environ["wsgi.input"], sock, self.idle_s)
        return self.app(environ, start_response)
