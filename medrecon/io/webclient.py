"""The HTTP side of DICOMweb volumes (:mod:`medrecon.io.dicomweb`): URLs, credentials, retries, errors.

URLs
----
``dicomweb://HOST[:PORT]/PATH?study=UID&series=UID`` names a series on the DICOMweb service at
``http://HOST[:PORT]/PATH`` (QIDO-RS, WADO-RS and STOW-RS below that root, e.g. Orthanc's
``/dicom-web``); ``dicomwebs://`` is the same over HTTPS.  The query names what to read
(``series``, and optionally ``study``) or, for an output, optionally the ``study`` the derived
series must belong to.  The form ``dicomweb:/HOST/...`` (one slash, what a path library makes of the
URL) is accepted too.  A URL never carries credentials: ``user:password@`` in it is refused.

Credentials (first found wins; never taken from the command line, never logged or put in a message)
----------------------------------------------------------------------------------------------------
1. ``MEDRECON_DICOMWEB_TOKEN``: an ``Authorization: Bearer`` token;
2. ``MEDRECON_DICOMWEB_USER`` and ``MEDRECON_DICOMWEB_PASSWORD``: HTTP basic authentication;
3. a netrc file, ``MEDRECON_NETRC`` or ``~/.netrc``: the ``machine`` entry of the URL's host.

Retries
-------
A request that fails in a way that may pass (connection refused or reset, a timeout, HTTP 429,
502, 503 or 504) is tried again after 0.5, 1, 2, ... s (doubling, at most 8 s), at most
``MEDRECON_DICOMWEB_RETRIES`` (default 3) more times; ``MEDRECON_DICOMWEB_TIMEOUT`` (default 30 s) is
the time one request may take.  Anything else fails at once as a one-sentence
:class:`DicomWebError` (a :class:`~medrecon.errors.MedreconError`: the CLI prints it and exits 2).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from medrecon.errors import InputError, MedreconError, require

__all__ = ["DicomWebError", "WebURL", "is_dicomweb_url", "parse_url", "Connection", "connect", "TRANSIENT_STATUS"]

log = logging.getLogger("medrecon")

SCHEMES = {"dicomweb": "http", "dicomwebs": "https"}
TRANSIENT_STATUS = (429, 502, 503, 504)


class DicomWebError(MedreconError):
    """A DICOMweb server could not be reached, refused a request, or did not store / return what it
    should.  ``kind``: ``"unreachable"``, ``"auth"`` (HTTP 401 / 403), ``"not_found"`` (HTTP 404),
    ``"http"`` (another HTTP error), ``"answer"`` (a malformed answer) or ``"incomplete"`` (instances
    missing); ``missing`` lists the SOP instance UIDs that did not land (an upload) or did not come
    back (a retrieval); ``series`` names the series."""

    def __init__(self, message: str, missing: list[str] | None = None, series: str | None = None,
                 kind: str = "incomplete"):
        super().__init__(message)
        self.missing = list(missing or [])
        self.series = series
        self.kind = kind


def is_dicomweb_url(path: Any) -> bool:
    """Whether ``path`` (a str or a path object) is a ``dicomweb://`` / ``dicomwebs://`` URL."""
    try:
        s = os.fspath(path)
    except TypeError:
        return False
    return isinstance(s, str) and s.lower().startswith(("dicomweb:/", "dicomwebs:/"))


@dataclass(frozen=True)
class WebURL:
    """A parsed ``dicomweb://`` URL: ``base`` is the service root over HTTP(S), ``shown`` the URL as
    messages and metadata give it (it never holds credentials)."""

    base: str
    host: str
    study: str | None
    series: str | None
    shown: str
    extra: dict = field(default_factory=dict)


def parse_url(url: Any) -> WebURL:
    """Parse a ``dicomweb[s]://HOST[:PORT]/PATH?study=UID&series=UID`` URL; one-sentence
    :class:`InputError` for credentials in it, an unknown key, a bad UID or a missing host."""
    s = os.fspath(url)
    scheme, _, rest = s.partition(":")
    if scheme.lower() not in SCHEMES:
        raise InputError(f"not a DICOMweb URL (dicomweb://HOST/PATH or dicomwebs://...): {s!r}")
    rest = "//" + rest.lstrip("/")  # dicomweb:/host (a path library's version) -> //host
    parts = urlsplit(rest)
    if "@" in (parts.netloc or ""):
        raise InputError("a DICOMweb URL must not hold credentials (user:password@); set MEDRECON_DICOMWEB_USER and "
                         "MEDRECON_DICOMWEB_PASSWORD (or MEDRECON_DICOMWEB_TOKEN) or use a netrc file")
    host = parts.hostname
    if not host:
        raise InputError(f"the DICOMweb URL {s!r} names no host (dicomweb://HOST[:PORT]/PATH?series=UID)")
    try:
        port = parts.port
    except ValueError:
        raise InputError(f"the DICOMweb URL {s!r} has an invalid port") from None
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"study", "series"})
    if unknown:
        raise InputError(f"unknown key {unknown[0]!r} in the DICOMweb URL {s!r}; it takes study=UID and series=UID")
    picked: dict[str, str | None] = {}
    for key in ("study", "series"):
        vals = query.get(key) or [None]
        if len(vals) > 1:
            raise InputError(f"{key}= is given twice in the DICOMweb URL {s!r}")
        v = vals[0].strip() if vals[0] is not None else None
        if v is not None and (not v or len(v) > 64 or not all(c.isdigit() or c == "." for c in v)):
            raise InputError(f"{key}={v!r} in the DICOMweb URL is not a DICOM UID (digits and dots, at most 64)")
        picked[key] = v
    netloc = f"{host}:{port}" if port else host
    if ":" in host:  # IPv6 literal
        netloc = f"[{host}]:{port}" if port else f"[{host}]"
    path = parts.path.rstrip("/")
    base = f"{SCHEMES[scheme.lower()]}://{netloc}{path}"
    shown = f"{scheme.lower()}://{netloc}{path}" + (f"?{parts.query}" if parts.query else "")
    return WebURL(base=base, host=host, study=picked["study"], series=picked["series"], shown=shown)


def _credentials(host: str) -> tuple[str, Any]:
    """(where they came from, a requests auth or a bearer header dict) for ``host``; ``("none", None)``."""
    token = os.environ.get("MEDRECON_DICOMWEB_TOKEN")
    if token:
        return "MEDRECON_DICOMWEB_TOKEN", {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MEDRECON_DICOMWEB_USER"), os.environ.get("MEDRECON_DICOMWEB_PASSWORD")
    if user or password:
        if not (user and password is not None):
            raise InputError("set both MEDRECON_DICOMWEB_USER and MEDRECON_DICOMWEB_PASSWORD (or neither)")
        return "MEDRECON_DICOMWEB_USER / MEDRECON_DICOMWEB_PASSWORD", (user, password)
    import netrc

    path = os.environ.get("MEDRECON_NETRC")
    where = Path(path).expanduser() if path else Path.home() / ".netrc"
    if path and not where.is_file():
        raise InputError(f"MEDRECON_NETRC names {str(where)!r}, which is not a file")
    if not where.is_file():
        return "none", None
    try:
        entry = netrc.netrc(str(where)).authenticators(host)
    except (netrc.NetrcParseError, OSError) as exc:
        line = getattr(exc, "lineno", None)
        raise InputError(f"the netrc file {str(where)!r} cannot be read"
                         + (f" (line {line})" if line else "")) from None
    if entry is None:
        return "none", None
    login, _, password = entry
    return f"the netrc file {str(where)!r}", (login or "", password or "")


def _int_env(name: str, default: int, lo: int) -> int:
    raw = os.environ.get(name)
    try:
        v = int(raw) if raw not in (None, "") else default
    except ValueError:
        raise InputError(f"{name} must be an integer, got {raw!r}") from None
    if v < lo:
        raise InputError(f"{name} must be >= {lo}, got {v}")
    return v


class Connection:
    """A :class:`dicomweb_client.DICOMwebClient` on one service with medrecon's credentials, retries
    and error sentences.  ``call(what, fn, *args)`` runs ``fn(client, *args)`` with the retries."""

    def __init__(self, url: WebURL):
        dwc = require("dicomweb_client", "dicomweb")
        import requests

        self.url = url
        self.source, auth = _credentials(url.host)
        self.retries = _int_env("MEDRECON_DICOMWEB_RETRIES", 3, 0)
        self.timeout = _int_env("MEDRECON_DICOMWEB_TIMEOUT", 30, 1)
        session = requests.Session()
        session.trust_env = False  # no ~/.netrc behind our back, no proxy variables
        if isinstance(auth, dict):
            session.headers.update(auth)
        elif auth is not None:
            session.auth = auth
        self.client = dwc.DICOMwebClient(url.base, session=session, timeout=self.timeout)
        self.client.set_http_retry_params(retry=False)  # retried here, the same way for every error kind
        for name in ("dicomweb_client", "urllib3"):  # their debug lines would carry request details
            logging.getLogger(name).setLevel(max(logging.getLogger(name).level, logging.WARNING))
        self.requests = requests
        self.tries = 0  # requests made (retries included), for the benchmarks

    def call(self, what: str, fn: Callable, *args, not_found: str | None = None, **kwargs):
        """``fn(self.client, *args, **kwargs)``, tried again on transient errors; a DicomWebError
        naming ``what`` otherwise (``not_found``: the sentence for HTTP 404)."""
        req = self.requests
        delay = 0.5
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            self.tries += 1
            try:
                return fn(self.client, *args, **kwargs)
            except req.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else None
                if status in TRANSIENT_STATUS and not last:
                    log.debug("DICOMweb %s: HTTP %s, retrying in %.1f s", what, status, delay)
                else:
                    raise self.http_error(what, status, not_found) from None
            except (req.ConnectionError, req.Timeout, req.exceptions.ChunkedEncodingError) as exc:
                if last:
                    kind = "timed out" if isinstance(exc, req.Timeout) else _reason(exc)
                    raise DicomWebError(
                        f"cannot reach the DICOMweb server {self.url.base} ({kind}) after {self.retries + 1} "
                        f"tries, {what}", kind="unreachable") from None
                log.debug("DICOMweb %s: %s, retrying in %.1f s", what, type(exc).__name__, delay)
            except (ValueError, KeyError) as exc:  # a malformed answer (not JSON, not multipart, ...)
                raise DicomWebError(f"the DICOMweb server {self.url.base} gave a malformed answer {what} "
                                    f"({type(exc).__name__})", kind="answer") from None
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def http_error(self, what: str, status: int | None, not_found: str | None = None) -> DicomWebError:
        """The sentence for an HTTP error ``status`` answered to ``what``."""
        base = self.url.base
        if status in (401, 403):
            if self.source == "none":
                how = ("no credentials were sent (set MEDRECON_DICOMWEB_USER / MEDRECON_DICOMWEB_PASSWORD, "
                       "MEDRECON_DICOMWEB_TOKEN or a netrc entry)")
            elif status == 401:
                how = f"the credentials from {self.source} were refused"
            else:
                how = f"the user from {self.source} is not allowed to do this"
            verb = "refused access" if status == 401 else "forbade the request"
            return DicomWebError(f"the DICOMweb server {base} {verb} (HTTP {status}) {what}: {how}", kind="auth")
        if status == 404:
            return DicomWebError(not_found or f"the DICOMweb server {base} answered HTTP 404 (not found) {what}",
                                 kind="not_found")
        return DicomWebError(f"the DICOMweb server {base} answered HTTP {status} {what}", kind="http")


def _reason(exc: Exception) -> str:
    """A short, credential-free reason for a connection error ("connection refused", ...)."""
    text = str(exc).lower()
    for key, say in (("refused", "connection refused"), ("reset", "connection reset"),
                     ("name or service not known", "unknown host"), ("nodename nor servname", "unknown host"),
                     ("temporary failure in name resolution", "unknown host"), ("timed out", "timed out"),
                     ("no route", "no route to host")):
        if key in text:
            return say
    return "connection failed"


def connect(url: Any) -> Connection:
    """A :class:`Connection` for a ``dicomweb://`` URL (a str, a path object or a :class:`WebURL`)."""
    return Connection(url if isinstance(url, WebURL) else parse_url(url))
