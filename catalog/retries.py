"""How hard each HTTP request is tried: one policy for the STAC API, products and their METADATA.XML.

The environment can set it; a search or a build given no policy (as from the command line) reads:

- ``SPECTRAL_CORPUS_STAC_RETRIES``: retries after a failed try (default 4, so 5 tries in all);
- ``SPECTRAL_CORPUS_STAC_TIMEOUT``: seconds to wait for the server to answer a request (default 60);
- ``SPECTRAL_CORPUS_STAC_BACKOFF``: base of the exponential wait between tries, seconds (default 1);
- ``SPECTRAL_CORPUS_STAC_MAX_WAIT``: longest wait between tries, also when the server's ``Retry-After``
  asks for more, seconds (default 60).

Only 429, 5xx, timeouts and broken connections are tried again; 401 and 403 never are.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from urllib3.util.retry import Retry

from spectral_corpus.catalog.errors import SourceError

RETRIES_ENV = "SPECTRAL_CORPUS_STAC_RETRIES"
TIMEOUT_ENV = "SPECTRAL_CORPUS_STAC_TIMEOUT"
BACKOFF_ENV = "SPECTRAL_CORPUS_STAC_BACKOFF"
MAX_WAIT_ENV = "SPECTRAL_CORPUS_STAC_MAX_WAIT"
#: HTTP statuses worth another try.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: GDAL's shortest wait before a retry, seconds (it reads 0 as "never retry").
GDAL_MIN_DELAY_S = 0.01


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try each HTTP request.

    Retries wait ``backoff_s * 2**(n - 1)`` seconds before try n + 1 (the first retry at once), or what
    the server's ``Retry-After`` says; no wait is longer than ``max_wait_s``.
    """

    attempts: int = 5
    backoff_s: float = 1.0
    max_wait_s: float = 60.0
    timeout_s: float = 60.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RetryPolicy:
        """The default policy with what ``SPECTRAL_CORPUS_STAC_RETRIES``, ``_TIMEOUT``, ``_BACKOFF`` and
        ``_MAX_WAIT`` set (see the module docstring); raise ValueError naming a variable that is not a
        usable number."""
        env = os.environ if environ is None else environ
        default = cls()
        retries = _env_number(env, RETRIES_ENV, default.attempts - 1, whole=True, positive=False)
        return cls(
            attempts=int(retries) + 1,
            backoff_s=_env_number(env, BACKOFF_ENV, default.backoff_s, whole=False, positive=False),
            max_wait_s=_env_number(env, MAX_WAIT_ENV, default.max_wait_s, whole=False, positive=False),
            timeout_s=_env_number(env, TIMEOUT_ENV, default.timeout_s, whole=False, positive=True),
        )

    def urllib3_retry(self) -> Retry:
        """The policy for a requests adapter: statuses worth a retry are retried, the last answer is returned."""
        return CappedRetry(
            total=self.attempts - 1,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=None,  # a STAC search is a POST, and safe to repeat
            backoff_factor=self.backoff_s,
            backoff_max=self.max_wait_s,
            raise_on_status=False,  # hand the last answer to the caller, which keeps its status
        )

    def gdal_options(self) -> dict[str, str]:
        """The policy in GDAL's terms, for its ``/vsicurl/`` reads: GDAL doubles its delay at each retry, and
        takes a delay of 0 for "do not retry", so the first wait is at least ``GDAL_MIN_DELAY_S``."""
        return {
            "GDAL_HTTP_MAX_RETRY": str(self.attempts - 1),
            "GDAL_HTTP_RETRY_DELAY": f"{max(self.backoff_s, GDAL_MIN_DELAY_S):g}",
            "GDAL_HTTP_TIMEOUT": f"{math.ceil(self.timeout_s):d}",
            "GDAL_HTTP_CONNECTTIMEOUT": f"{math.ceil(self.timeout_s):d}",
        }


def _env_number(env: Mapping[str, str], name: str, default: float, *, whole: bool, positive: bool) -> float:
    """A number from the environment: ``default`` when unset or empty; ValueError naming ``name`` if bad."""
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(int(text)) if whole else float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        kind = ("a positive" if positive else "a non-negative") + (" whole" if whole else "")
        raise SourceError(f"{name}={text!r} is not {kind} number")
    return value


class CappedRetry(Retry):
    """urllib3 Retry that waits no longer than ``backoff_max``, also when told so by Retry-After."""

    def parse_retry_after(self, retry_after: str) -> float:
        return min(super().parse_retry_after(retry_after), self.backoff_max)
