"""Credentials for HTTP hosts, from the environment or netrc, each sent only to the hosts it belongs to.

Two sets of environment variables, for two kinds of host:

- the STAC API: a bearer token in ``SPECTRAL_CORPUS_STAC_TOKEN``, or ``SPECTRAL_CORPUS_STAC_USER`` and
  ``SPECTRAL_CORPUS_STAC_PASSWORD`` for basic auth; sent to the host of the API's URL only;
- products (images, quality layers, METADATA.XML behind ``http(s)://``): ``SPECTRAL_CORPUS_HTTP_TOKEN``,
  or ``SPECTRAL_CORPUS_HTTP_USER`` and ``SPECTRAL_CORPUS_HTTP_PASSWORD``, sent only to the hosts that
  ``SPECTRAL_CORPUS_HTTP_HOSTS`` lists (comma-separated host names, or ``host:port``); they must be
  listed, so that no product href elsewhere ever gets them.

A host that these do not cover gets its own entry of ``~/.netrc`` (or of the file ``NETRC`` names), if any.
A token wins over a user and password. Secrets never appear in a ``repr``, a message or a log line:
``Credentials.origin`` says where they came from, and ``Credentials.redact`` hides them in text that a
server may have echoed.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from requests import PreparedRequest, Response
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase, HTTPBasicAuth
from requests.utils import get_netrc_auth
from urllib3.util.retry import Retry

from spectral_corpus.catalog.errors import ProductAccessError, SourceError

TOKEN_ENV = "SPECTRAL_CORPUS_STAC_TOKEN"
USER_ENV = "SPECTRAL_CORPUS_STAC_USER"
PASSWORD_ENV = "SPECTRAL_CORPUS_STAC_PASSWORD"
HTTP_TOKEN_ENV = "SPECTRAL_CORPUS_HTTP_TOKEN"
HTTP_USER_ENV = "SPECTRAL_CORPUS_HTTP_USER"
HTTP_PASSWORD_ENV = "SPECTRAL_CORPUS_HTTP_PASSWORD"
HTTP_HOSTS_ENV = "SPECTRAL_CORPUS_HTTP_HOSTS"
#: Statuses that mean "these credentials (or none) are not good enough": never retried.
REFUSED = frozenset({401, 403})
#: A URL's scheme and authority (``user:password@host:port``), wherever it stands in an href.
_AUTHORITY = re.compile(r"[a-z][a-z0-9+.-]*://([^/?#]*)", re.IGNORECASE)
HOW_TO_AUTHENTICATE_STAC = (
    f"set {TOKEN_ENV} to a bearer token, or {USER_ENV} and {PASSWORD_ENV}, or add the host to ~/.netrc"
)


@dataclass(frozen=True)
class Credentials:
    """What to authenticate with, where it came from, and the strings to keep out of messages."""

    kind: str = "none"  # "basic", "bearer" or "none"
    origin: str = "none"
    user: str = field(default="", repr=False)
    secret: str = field(default="", repr=False)  # the password or the token

    @property
    def auth(self) -> AuthBase | None:
        """For requests: basic auth or a bearer token header; None without credentials."""
        if self.kind == "basic":
            return HTTPBasicAuth(self.user, self.secret)
        if self.kind == "bearer":
            return BearerAuth(self.secret)
        return None

    @property
    def secrets(self) -> tuple[str, ...]:
        """The strings that must never be shown: the secret, and the basic auth header's encoding of it."""
        if self.kind == "basic":
            encoded = base64.b64encode(f"{self.user}:{self.secret}".encode()).decode()
            return tuple(s for s in (self.secret, encoded) if s)
        return (self.secret,) if self.secret else ()

    def gdal_options(self) -> dict[str, str]:
        """The credentials as GDAL configuration options for its HTTP reads (none without credentials)."""
        if self.kind == "basic":
            return {"GDAL_HTTP_AUTH": "BASIC", "GDAL_HTTP_USERPWD": f"{self.user}:{self.secret}"}
        if self.kind == "bearer":
            return {"GDAL_HTTP_AUTH": "BEARER", "GDAL_HTTP_BEARER": self.secret}
        return {}

    def redact(self, text: str) -> str:
        """``text`` with every secret replaced by ``***``."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


NO_CREDENTIALS = Credentials()


def stac_credentials(url: str, environ: Mapping[str, str] | None = None) -> Credentials:
    """Credentials for the STAC API at ``url``: ``SPECTRAL_CORPUS_STAC_*``, else netrc."""
    env = os.environ if environ is None else environ
    found = _from_env(env, TOKEN_ENV, USER_ENV, PASSWORD_ENV)
    return found if found is not None else netrc_credentials(url)


def host_credentials(url: str, environ: Mapping[str, str] | None = None) -> Credentials:
    """Credentials for a product URL: ``SPECTRAL_CORPUS_HTTP_*`` when its host is listed in
    ``SPECTRAL_CORPUS_HTTP_HOSTS``, else the host's netrc entry, else none.

    Raises SourceError when credentials are set without the hosts they belong to, or half set.
    """
    env = os.environ if environ is None else environ
    found = _from_env(env, HTTP_TOKEN_ENV, HTTP_USER_ENV, HTTP_PASSWORD_ENV)
    if found is not None:
        hosts = {h.strip().lower() for h in env.get(HTTP_HOSTS_ENV, "").split(",") if h.strip()}
        if not hosts:
            raise SourceError(
                f"{HTTP_HOSTS_ENV} must list the hosts to send {found.origin} to (comma-separated host names), "
                "so that they never go to another host"
            )
        if host_matches(url, hosts):
            return found
    return netrc_credentials(url)


def host_matches(url: str, hosts: set[str]) -> bool:
    """True when ``url``'s host (or ``host:port``) is one of ``hosts`` (lower case)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return host in hosts or (parts.port is not None and f"{host}:{parts.port}" in hosts)


def netrc_credentials(url: str) -> Credentials:
    """The netrc entry of ``url``'s host (``~/.netrc``, or the file that ``NETRC`` in ``os.environ`` names);
    none when it has none."""
    found = get_netrc_auth(url)
    return _basic(*found, "user and password from netrc") if found else NO_CREDENTIALS


def _from_env(env: Mapping[str, str], token_env: str, user_env: str, password_env: str) -> Credentials | None:
    token = env.get(token_env)
    if token:
        return Credentials("bearer", f"a bearer token from {token_env}", secret=token)
    user, password = env.get(user_env), env.get(password_env)
    if bool(user) != bool(password):
        raise SourceError(f"set both {user_env} and {password_env}, or neither")
    if user and password:
        return _basic(user, password, f"user and password from {user_env} and {password_env}")
    return None


def _basic(user: str, password: str, origin: str) -> Credentials:
    return Credentials("basic", origin, user=user, secret=password)


def host_of(url: str) -> str:
    """``host`` or ``host:port`` of a URL, for messages (never its user information)."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port is not None else str(parts.hostname)


def without_query(url: str) -> str:
    """``url`` for messages: no user information, no query (a signed URL's signature), no fragment."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, host_of(url), parts.path, "", ""))


def has_userinfo(href: str) -> bool:
    """True when a URL in ``href`` (also one inside a GDAL path such as ``/vsizip//vsicurl/...``) carries
    ``user[:password]@`` before its host."""
    return any("@" in found[1] for found in _AUTHORITY.finditer(href))


def hide_userinfo(href: str) -> str:
    """``href`` with the user information of its URLs replaced by ``***``, for messages."""
    return _AUTHORITY.sub(lambda found: f"{found[0][: -len(found[1])]}{_userless(found[1])}", href)


def _userless(authority: str) -> str:
    return f"***@{authority.rpartition('@')[2]}" if "@" in authority else authority


def refused(url: str, status: int, credentials: Credentials) -> ProductAccessError:
    """The error that stops a run when a product host answers 401/403: names the host, the file (without
    its query) and where the credentials sent came from, and says how to give others."""
    host = host_of(url)
    message = (
        f"product host {host} refused the credentials (HTTP {status}; sent: {credentials.origin}) "
        f"for {without_query(url)}; set {HTTP_TOKEN_ENV} to a bearer token, or {HTTP_USER_ENV} and "
        f"{HTTP_PASSWORD_ENV}, with {HTTP_HOSTS_ENV}={(urlsplit(url).hostname or host)}, or add the host to ~/.netrc"
    )
    return ProductAccessError(credentials.redact(message), host=host, status=status)


class BearerAuth(AuthBase):
    """An ``Authorization: Bearer`` header (its ``repr`` hides the token)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: PreparedRequest) -> PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "BearerAuth(***)"


class NoAuth(AuthBase):
    """Session auth placeholder: keeps requests from adding netrc credentials while preparing."""

    def __call__(self, request: PreparedRequest) -> PreparedRequest:
        return request


class CredentialAdapter(HTTPAdapter):
    """Adds each request's credentials just before it is sent, as ``credentials_for(url)`` says.

    pystac-client logs each prepared request with its headers at DEBUG level; credentials added here
    never show there, and go only where ``credentials_for`` allows (not to the host of a redirect or
    of a ``next`` link that it does not cover).
    """

    def __init__(self, credentials_for: Callable[[str], Credentials], retry: Retry) -> None:
        super().__init__(max_retries=retry)
        self._credentials_for = credentials_for

    def send(self, request: PreparedRequest, *args: Any, **kwargs: Any) -> Response:
        auth = self._credentials_for(request.url or "").auth
        if auth is not None:
            request = auth(request)
        return super().send(request, *args, **kwargs)


def only_for_host(host: str | None, credentials: Credentials) -> Callable[[str], Credentials]:
    """``credentials`` for URLs of ``host``, none for any other."""
    return lambda url: credentials if urlsplit(url).hostname == host else NO_CREDENTIALS
