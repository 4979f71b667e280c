"""A small synchronous client of the control API, for the CLI and scripts.

It talks to the daemon of one data directory over its Unix socket, or over loopback TCP with
the bearer token from that directory. Failures come out as two exceptions: `DaemonNotRunning`
(nothing answers) and `ApiError` (the daemon answered with an error, or the exchange broke).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from meshd.paths import API_SOCKET, API_TOKEN

__all__ = ["ApiClient", "ApiError", "DaemonNotRunning", "read_token"]


class DaemonNotRunning(Exception):
    """No meshd daemon answers for this data directory."""

    def __init__(self, data_dir: Path, detail: str) -> None:
        super().__init__(f"no meshd daemon is running for data directory {data_dir} ({detail})")
        self.data_dir = data_dir
        self.detail = detail


class ApiError(Exception):
    """The daemon answered with an error, or the exchange with it failed.

    `status` is the HTTP status, or 0 when no answer came (timeout, broken connection).
    """

    def __init__(self, status: int, message: str, code: str = "") -> None:
        super().__init__(f"HTTP {status} {code}: {message}" if status else message)
        self.status = status
        self.code = code
        self.message = message


def read_token(data_dir: Path) -> str:
    """The API bearer token stored in `data_dir`."""
    path = Path(data_dir) / API_TOKEN
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ApiError(
            0, f"no API token at {path}: the daemon creates it when its TCP API is enabled"
        ) from None
    except OSError as exc:
        raise ApiError(0, f"cannot read API token {path}: {exc.strerror}") from exc
    if not token:
        raise ApiError(0, f"API token file {path} is empty")
    return token


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind an httpx error, if any (httpx wraps httpcore, which wraps it)."""
    seen: BaseException | None = exc
    for _ in range(8):  # the chain is short; the bound guards against cycles
        if seen is None:
            return None
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class ApiClient:
    """Synchronous client of one daemon's control API."""

    def __init__(
        self,
        data_dir: Path,
        *,
        timeout: float = 10.0,
        tcp: str | None = None,
        token: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.socket_path = self.data_dir / API_SOCKET
        self.tcp = tcp
        self.timeout = timeout
        # verify=False: the API is plain HTTP (a Unix socket, or loopback TCP), and loading
        # the CA bundle for TLS it never does costs every command about 0.1-0.2 s.
        if tcp is None:
            transport = httpx.HTTPTransport(uds=os.fspath(self.socket_path), verify=False)
            # The host part is ignored on a Unix socket; it only has to be a valid URL.
            base_url = "http://meshd"
            headers = {}
        else:
            transport = httpx.HTTPTransport(verify=False)
            base_url = f"http://{tcp}"
            headers = {"Authorization": f"Bearer {token or read_token(self.data_dir)}"}
        # trust_env=False: a proxy from the environment must never see the token or the API.
        self._http = httpx.Client(
            transport=transport,
            base_url=base_url,
            headers=headers,
            timeout=timeout,
            trust_env=False,
            verify=False,
        )

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET `path` and return the decoded JSON answer."""
        return self._request("GET", path, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        """POST `body` as JSON to `path` and return the decoded JSON answer."""
        return self._request("POST", path, json=body)

    def close(self) -> None:
        """Close the connection to the daemon."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _where(self) -> str:
        return f"http://{self.tcp}" if self.tcp is not None else str(self.socket_path)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        if self.tcp is None and not os.path.lexists(self.socket_path):
            # Said without trying to connect: the common case, and httpcore leaks the socket
            # of a failed Unix connect until garbage collection.
            raise DaemonNotRunning(self.data_dir, f"no socket at {self.socket_path}")
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise self._connect_failure(exc) from exc
        except httpx.TimeoutException as exc:
            raise ApiError(
                0, f"the daemon at {self._where()} did not answer within {self.timeout:g} s"
            ) from exc
        except httpx.TransportError as exc:
            raise ApiError(0, f"connection to the daemon at {self._where()} failed: {exc}") from exc
        if not response.is_success:
            raise self._error_from(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ApiError(
                response.status_code, f"the daemon at {self._where()} answered with invalid JSON"
            ) from exc

    def _connect_failure(self, exc: httpx.ConnectError) -> Exception:
        cause = _os_error(exc)
        code = cause.errno if cause is not None else None
        if self.tcp is not None:
            if code == errno.ECONNREFUSED:
                return DaemonNotRunning(self.data_dir, f"nothing listens on {self.tcp}")
            return ApiError(0, f"cannot connect to the daemon at {self._where()}: {exc}")
        if not self.socket_path.exists() or code == errno.ENOENT:
            return DaemonNotRunning(self.data_dir, f"no socket at {self.socket_path}")
        if code == errno.ECONNREFUSED:
            # The file outlived its daemon (crash, kill -9): nothing listens behind it.
            return DaemonNotRunning(self.data_dir, f"stale socket at {self.socket_path}")
        return ApiError(0, f"cannot connect to the daemon at {self.socket_path}: {exc}")

    @staticmethod
    def _error_from(response: httpx.Response) -> ApiError:
        try:
            error = response.json()["error"]
            return ApiError(response.status_code, str(error["message"]), str(error["code"]))
        except (ValueError, KeyError, TypeError):
            # Not our error format (a proxy, or not a meshd daemon): show what came back.
            text = response.text.strip().splitlines()
            return ApiError(response.status_code, text[0][:200] if text else response.reason_phrase)
