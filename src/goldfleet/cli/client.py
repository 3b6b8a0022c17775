"""An httpx client of the goldfleet API that finds the server and token through the home.

httpx is imported when the first client is made, not with this module: ``goldfleet --help`` and
a command's usage errors need no HTTP, and importing httpx is most of a command's start-up.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from goldfleet.homedir import home_dir

if TYPE_CHECKING:
    import httpx

SERVER_FILE = "server.json"
TOKEN_FILE = "admin.token"
DEFAULT_PORT = 8437
CLONE_PAGE = 1000  # clones asked for per request of clone list (the API's largest page)


class ClientError(Exception):
    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def find_server(home: Path | None = None) -> tuple[str, str | None]:
    """URL and token: ``GOLDFLEET_URL``/``GOLDFLEET_TOKEN``, else the home's files."""
    home = home or home_dir()
    url = os.environ.get("GOLDFLEET_URL")
    if not url:
        server = home / SERVER_FILE
        if server.exists():
            url = json.loads(server.read_text())["url"]
        else:
            url = f"http://127.0.0.1:{DEFAULT_PORT}"
    token = os.environ.get("GOLDFLEET_TOKEN")
    if not token:
        token_file = home / TOKEN_FILE
        if token_file.exists():
            token = token_file.read_text().strip()
    return url.rstrip("/"), token


class Client:
    def __init__(self, url: str, token: str | None, *, timeout: float = 600.0) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url
        # plain http has no TLS to verify: loading the CA bundle for it anyway costs a command
        # a fifth of its start-up; an https URL is verified as ever (redirects are not followed)
        verify = not url.lower().startswith("http:")
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout, verify=verify)

    @classmethod
    def from_home(cls, home: Path | None = None) -> Client:
        return cls(*find_server(home))

    def close(self) -> None:
        self.http.close()

    @contextmanager
    def _answered(self) -> Iterator[None]:
        """A server that cannot be reached or does not answer in time, said plainly."""
        import httpx

        try:
            yield
        except httpx.ConnectError:
            raise ClientError(
                f"no goldfleet server answers at {self.url}; start one with: goldfleet serve"
            ) from None
        except httpx.TimeoutException:
            raise ClientError(
                f"the goldfleet server at {self.url} did not answer in time"
            ) from None

    @staticmethod
    def raise_for(resp: httpx.Response) -> None:
        if resp.status_code >= 400:
            resp.read()
            try:
                message = resp.json().get("message") or resp.text
            except ValueError:
                message = resp.text or resp.reason_phrase
            raise ClientError(message, resp.status_code)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        with self._answered():
            resp = self.http.request(method, path, **kwargs)
        self.raise_for(resp)
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    def get_pages(self, path: str, params: dict[str, Any] | None = None) -> list[Any]:
        """Every item of a paged list: the first page, then each page the server names in its
        ``Link: <…>; rel="next"`` header, until one names none (a server without paging sends
        everything in the first answer)."""
        items: list[Any] = []
        for page in self.iter_pages(path, params):
            items.extend(page)
        return items

    def iter_pages(self, path: str, params: dict[str, Any] | None = None) -> Iterator[list[Any]]:
        """The pages of :meth:`get_pages`, one at a time as each arrives."""
        url: str | None = path
        while url is not None:
            with self._answered():
                resp = self.http.get(url, params=params)
            self.raise_for(resp)
            yield resp.json()
            url, params = resp.links.get("next", {}).get("url"), None  # the link keeps the query

    def stream_lines(self, method: str, path: str, **kwargs: Any) -> Iterator[Any]:
        """A request answered with JSON lines (a long action's progress), one at a time."""
        with self._answered(), self.http.stream(method, path, **kwargs) as resp:
            self.raise_for(resp)
            for line in resp.iter_lines():
                if line.strip():
                    yield json.loads(line)

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("POST", path, json=body, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("PUT", path, json=body, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)

    def upload(self, path: str, file: Path, params: dict[str, Any], progress: Any = None) -> Any:
        """Stream a file as the request body (images can be many GB)."""

        def chunks() -> Iterator[bytes]:
            with file.open("rb") as f:
                while block := f.read(1 << 20):
                    if progress is not None:
                        progress(len(block))
                    yield block

        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(file.stat().st_size),
        }
        return self.request("POST", path, params=params, content=chunks(), headers=headers)
