"""Files and buckets: object URLs in, local files staged, results streamed into a store.

``s3://``, ``gs://`` and ``az://`` (and the other spellings obstore knows) name objects.
An object input is sent to the API as a presigned GET URL; a local file is first
uploaded to the staging location, presigned, sent, and deleted afterwards; a result is
streamed from its URL into an object, which becomes visible only once complete.

obstore is an optional dependency (the ``storage`` extra): it is imported the first
time an object URL, a staging location or a store is used, never by
``import monica_async``. Stores are built from the environment variables each
cloud's own tools read (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...), one per
bucket, unless the client was given a store for that location.

A store whose credentials cannot be found is told apart from one that answers: its
first call goes alone, and once the credential chain has come up empty every later
call fails at once instead of walking the chain again (seconds each).

Messages and logs never show a credential or a presigned URL's query string.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import mimetypes
import os
import re
import secrets
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit

import aiohttp
import attrs

from . import _download, _retry
from ._config import RetryPolicy
from ._exceptions import APIError, InvalidRequestError, MonicaError, StorageError, excerpt
from ._http import EnvProxies, loggable_url
from ._redact import scrub_error, scrub_text
from ._validation import validate_image_url

if TYPE_CHECKING:
    from obstore.store import AzureStore, GCSStore, ObjectStore, S3Store

    SigningStore = AzureStore | GCSStore | S3Store

__all__ = [
    "OBJECT_SCHEMES",
    "ObjectLocation",
    "Prepared",
    "Route",
    "Storage",
    "is_object_url",
    "presign_seconds",
    "route",
]

logger = logging.getLogger("monica_async")

#: URL schemes of objects, as obstore spells them (S3, Google Cloud Storage, Azure).
OBJECT_SCHEMES: Final = frozenset({"s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "adl"})
#: Size of one part of a multipart upload, and the largest result written in one put.
#: 5 MiB is S3's smallest part; memory per result stays within a few parts.
PART_SIZE: Final = 5 * 1024 * 1024
#: Parts of one result uploaded at once.
UPLOAD_CONCURRENCY: Final = 2
#: What the body is handed to the store in (see ``_continued``).
_PIECE: Final = 1024 * 1024
#: Presigned URLs live at least this long (seconds), whatever the retry settings...
MIN_PRESIGN: Final = 3600.0
#: ...and at most this long: S3's limit for a presigned URL.
MAX_PRESIGN: Final = 7 * 24 * 3600.0
#: Added to the longest a call can take, for the time an input waits for its turn.
PRESIGN_SLACK: Final = 900.0
#: The object ``check_writable`` writes and deletes again.
CHECK_NAME: Final = ".monica-upscale-write-check"
INSTALL_HINT: Final = 'pip install "monica-async[storage]"'

#: Seconds a cancelled upload waits for its abort to reach the store before giving up on it.
ABORT_WAIT: Final = 30.0
#: Seconds a store whose credential chain came up empty fails calls at once; the next
#: call after that walks the chain again (a passing outage of a metadata service).
NO_CREDENTIALS_HOLD: Final = 60.0

_CREDENTIAL_HINTS: Final = {
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary "
    "credentials)",
    "gs": "GOOGLE_SERVICE_ACCOUNT (the path of a service account key file)",
    "az": "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY, or with "
    "AZURE_STORAGE_SAS_TOKEN, or with a service principal (AZURE_CLIENT_ID, "
    "AZURE_CLIENT_SECRET and AZURE_TENANT_ID)",
}
_FAMILY: Final = {"s3a": "s3", "azure": "az", "abfs": "az", "abfss": "az", "adl": "az"}
#: Codes in an S3 error body that mean the credentials themselves were refused.
_REFUSED_CODES: Final = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AuthenticationFailed",
    }
)
#: What a store's error says when it went looking for credentials on a metadata service
#: (or found no Azure account to look them up for).
_METADATA_SERVICE: Final = re.compile(
    r"/latest/api/token|/latest/meta-data|computeMetadata|/metadata/identity|token request|"
    r"credential|Account must be specified",
    re.IGNORECASE,
)
_ERROR_CODE: Final = re.compile(r"<Code>([A-Za-z]+)</Code>|\(code: ([A-Za-z]+)\)")
_UNSAFE_NAME: Final = re.compile(r"[^A-Za-z0-9._-]+")
_UNKNOWN_TYPE: Final = "application/octet-stream"
_T = TypeVar("_T")

# Deletions of staged objects still running after their call was cancelled.
_PENDING: set[asyncio.Task[None]] = set()
_STAGING_HINT: Final = (
    "a local file is uploaded to a staging location first: pass "
    "staging='s3://bucket/prefix/' to MonicaClient (--staging on the command line)"
)


def load_obstore() -> ModuleType:
    """Import obstore, or say which extra to install."""
    try:
        import obstore
        import obstore.store
    except ImportError:
        raise InvalidRequestError(
            f"object URLs (s3://, gs://, az://) need the storage extra: {INSTALL_HINT}"
        ) from None
    return obstore


class Route(enum.Enum):
    """What an input of ``upscale`` is."""

    URL = "url"
    OBJECT = "object"
    FILE = "file"


def route(image: object) -> Route:
    """Tell a URL (sent as is, or refused by the URL checks) from an object and a local file."""
    if isinstance(image, os.PathLike):
        return Route.FILE
    if not isinstance(image, str):
        return Route.URL
    scheme, sep, _ = image.partition("://")
    if sep and scheme.isascii() and scheme.isalnum():
        scheme = scheme.lower()
        if scheme in OBJECT_SCHEMES:
            return Route.OBJECT
        return Route.FILE if scheme == "file" else Route.URL
    return Route.FILE if image.strip() else Route.URL


def is_object_url(text: object) -> bool:
    """Whether *text* is a string naming an object (``s3://``, ``gs://``, ``az://``, ...)."""
    return route(text) is Route.OBJECT


@attrs.frozen
class ObjectLocation:
    """An object (or a prefix) named by a URL: ``<scheme>://<bucket>/<key>``.

    The key is everything after the bucket, taken literally (no percent-decoding), as
    the clouds' own command-line tools do.
    """

    root: str
    key: str

    @property
    def url(self) -> str:
        """``<root>/<key>``."""
        return f"{self.root}/{self.key}" if self.key else self.root

    @property
    def family(self) -> str:
        """``s3``, ``gs`` or ``az``."""
        scheme = self.root.split(":", 1)[0]
        return _FAMILY.get(scheme, scheme)

    @classmethod
    def parse(cls, url: str, *, what: str, prefix: bool = False) -> ObjectLocation:
        """Parse *url*, an object (or with *prefix*, a prefix) called *what* in messages.

        Raises:
            InvalidRequestError: *url* is not an object URL with a bucket (and a key,
                unless *prefix*).
        """
        scheme, sep, rest = url.partition("://")
        bucket, _, key = rest.partition("/")
        example = "s3://bucket/prefix/" if prefix else "s3://bucket/key.png"
        if not sep or scheme.lower() not in OBJECT_SCHEMES or not bucket:
            raise InvalidRequestError(
                f"{what} must be an object URL such as {example!r} (schemes: "
                f"{', '.join(sorted(OBJECT_SCHEMES))}), got {url!r}"
            )
        _check_key(key, url, what)
        if prefix:
            key = key if not key or key.endswith("/") else key + "/"
        elif not key or key.endswith("/"):
            raise InvalidRequestError(
                f"{what} must name an object, such as {example!r}, not a prefix: got {url!r}"
            )
        return cls(f"{scheme.lower()}://{bucket}", key)

    def child(self, name: str) -> ObjectLocation:
        """The object *name* under this prefix."""
        return ObjectLocation(self.root, self.key + name)


def _check_key(key: str, url: str, what: str) -> None:
    """Refuse a key the stores' client cannot name as written (it would name another object).

    Spaces and any printable character are fine: keys are literal. Control characters
    and empty, ``.`` or ``..`` segments are not (obstore refuses the ones and would
    drop the others).
    """
    # Category Cc: the C0 and C1 controls; Cs: lone surrogates, from undecodable names.
    bad = next((c for c in key if unicodedata.category(c) in ("Cc", "Cs")), None)
    if bad is not None:
        raise InvalidRequestError(
            f"{what} must not contain control characters (found {bad!r}), got {url!r}"
        )
    segments = key.split("/")
    if segments[-1] == "":
        segments.pop()  # a prefix's trailing slash
    if any(segment in ("", ".", "..") for segment in segments):
        raise InvalidRequestError(
            f"{what} must not have empty, '.' or '..' path segments ('//', '/./'), got {url!r}"
        )


def presign_seconds(policy: RetryPolicy, timeout: aiohttp.ClientTimeout) -> float:
    """How long a presigned input URL stays valid: longer than the call can take.

    The last retry may start just before the policy's deadline and last one attempt's
    timeout; :data:`PRESIGN_SLACK` covers the wait for the rate limiter before the
    first attempt. At least :data:`MIN_PRESIGN`, at most :data:`MAX_PRESIGN`.
    """
    total = timeout.total
    if total is None:
        return MAX_PRESIGN
    window = policy.max_attempts * (total + max(policy.max_backoff, policy.max_retry_after))
    if policy.deadline is not None:
        window = min(window, policy.deadline + total)
    return min(MAX_PRESIGN, max(MIN_PRESIGN, window + PRESIGN_SLACK))


def redact(text: str) -> str:
    """*text* with the query string of every URL in it replaced (signatures, SAS tokens)."""
    return scrub_text(text)


class Failure(enum.Enum):
    """What kind of failure a store's error is."""

    #: No such object or bucket: the store answered.
    MISSING = "missing"
    #: The store does not know the credentials (or their signature).
    REFUSED = "refused"
    #: The credentials may not do this (or, on a HEAD, were refused).
    DENIED = "denied"
    #: The credential chain came up empty (or no Azure account is set): nothing was sent.
    NO_CREDENTIALS = "no-credentials"
    #: Anything else: a network failure, a malformed setting, a server error.
    OTHER = "other"


def _code_of(text: str) -> str | None:
    found = _ERROR_CODE.search(text)
    return (found.group(1) or found.group(2)) if found else None


def classify(exc: BaseException) -> Failure:
    """The kind of failure *exc*, an error of the store's client, is."""
    import obstore.exceptions

    text = str(exc)
    code = _code_of(text)
    if isinstance(exc, FileNotFoundError):
        return Failure.MISSING
    if isinstance(exc, obstore.exceptions.UnauthenticatedError) or code in _REFUSED_CODES:
        return Failure.REFUSED
    if isinstance(exc, obstore.exceptions.PermissionDeniedError) or code == "AccessDenied":
        return Failure.DENIED
    if _METADATA_SERVICE.search(text):
        return Failure.NO_CREDENTIALS
    return Failure.OTHER


def storage_error(exc: BaseException, operation: str, location: ObjectLocation) -> StorageError:
    """Turn an error of the store's client into one :class:`StorageError` that says what to do."""
    return _failed(operation, location, _why(exc, operation, location))


def _why(exc: BaseException, operation: str, location: ObjectLocation) -> str:
    """What went wrong and what to do, in a few words (no URL query, no debug dump)."""
    text = redact(str(exc))
    code = _code_of(text)
    hint = _CREDENTIAL_HINTS.get(location.family, "the store's credentials")
    bucket = location.root.split("://", 1)[1]
    failure = classify(exc)
    if failure is Failure.MISSING:
        # A write names no object that could be missing; a HEAD answer says nothing more.
        if operation == "read" and code not in ("NoSuchBucket", "ContainerNotFound"):
            why = "no such object (or no such bucket)"
        else:
            why = f"the bucket {bucket!r} does not exist"
    elif failure is Failure.REFUSED:
        why = f"the credentials were refused ({code or 'unauthenticated'}); check {hint}"
    elif failure is Failure.DENIED:
        verb = "read" if operation == "read" else "write"
        if code is None:
            # A HEAD answer has no body to say which: unknown credentials or no right.
            why = f"access denied: the credentials were refused, or may not {verb} it; check {hint}"
        else:
            why = f"access denied ({code}): the credentials in use may not {verb} it"
    elif failure is Failure.NO_CREDENTIALS:
        found = "no account" if "Account must be specified" in text else "no credentials"
        why = f"{found} found; set {hint}"
    else:
        first_line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        why = excerpt(first_line, 300)
    return why


def _failed(operation: str, location: ObjectLocation, why: str) -> StorageError:
    action = {
        "read": "reading",
        "stage": "staging a file at",
        "write": "writing",
        "check": "writing to",
        "configure": "opening a store for",
    }[operation]
    return StorageError(
        f"{action} {location.url} failed: {why}", url=location.url, operation=operation
    )


@attrs.define(eq=False)
class Prepared:
    """An input made sendable: the URL to send, what to record, what to clean up after."""

    url: str
    source: str
    _staged: tuple[ObjectStore, str, str] | None = None

    def scrub(self, error: MonicaError) -> None:
        """Take the presigned URL out of *error* (servers quote the image URL they failed on)."""
        secret = self.url
        query = urlsplit(secret).query
        shown = f"{self.source} (presigned)"

        def clean(text: str) -> str:
            # The client may have hidden the query already: the URL then reads so.
            text = text.replace(secret, shown).replace(scrub_text(secret), shown)
            return text.replace(query, "<redacted>") if query else text

        error.args = tuple(clean(a) if isinstance(a, str) else a for a in error.args)
        for name in ("message", "body"):
            value = getattr(error, name, None)
            if isinstance(value, str):
                setattr(error, name, clean(value))
        scrub_error(error, urls=(secret,))

    async def release(self) -> None:
        """Delete the staged object, if any; runs to its end even if the caller is cancelled."""
        if self._staged is None:
            return
        store, key, url = self._staged
        self._staged = None
        task = asyncio.ensure_future(_delete_staged(store, key, url))
        _PENDING.add(task)
        task.add_done_callback(_PENDING.discard)
        await asyncio.shield(task)


async def _delete_staged(store: ObjectStore, key: str, url: str) -> None:
    import obstore

    try:
        await obstore.delete_async(store, key)
    except Exception as exc:  # the call's outcome stands; the object is only left over
        logger.warning(
            "could not delete the staged object %s: %s", url, excerpt(redact(str(exc)), 200)
        )
    else:
        logger.debug("deleted the staged object %s", url)


@attrs.define(eq=False)
class _Gate:
    """What is known of one store's credentials: nothing, until it answers a call."""

    #: The store answered a call: its credentials were found.
    proven: bool = False
    #: Why the store has no credentials (the chain came up empty): calls fail at once...
    missing: str | None = None
    #: ...until this time of the event loop's clock.
    missing_until: float = 0.0
    lock: asyncio.Lock = attrs.field(factory=asyncio.Lock)

    def why_missing(self) -> str | None:
        """Why calls fail at once now, or ``None``: go ahead (and find out)."""
        if self.missing is not None and asyncio.get_running_loop().time() >= self.missing_until:
            self.missing = None
        return self.missing


@attrs.define(eq=False)
class Storage:
    """The object stores a client uses, its staging location, and what goes through them.

    Args:
        staging: Where local files are uploaded before being sent (a prefix URL).
        stores: Stores given by the user, by the location (bucket or prefix URL) they
            are rooted at; other locations get a store built from the environment.
    """

    staging: ObjectLocation | None = None
    stores: Mapping[str, ObjectStore] = attrs.field(factory=dict)
    _built: dict[str, ObjectStore] = attrs.field(init=False, factory=dict)
    #: What is known of each store's credentials, by the store's id.
    _gates: dict[int, _Gate] = attrs.field(init=False, factory=dict)

    @classmethod
    def configure(
        cls, staging: str | None = None, stores: Mapping[str, ObjectStore] | None = None
    ) -> Storage:
        """Check the client's ``staging`` and ``stores`` arguments.

        Raises:
            InvalidRequestError: One is invalid, or obstore is not installed.
        """
        location = None
        if staging is not None:
            if not isinstance(staging, str):
                raise InvalidRequestError(
                    f"staging must be an object URL string such as 's3://bucket/tmp/', "
                    f"got {type(staging).__name__}"
                )
            location = ObjectLocation.parse(staging, what="staging", prefix=True)
        given: dict[str, ObjectStore] = {}
        if stores is not None:
            if not isinstance(stores, Mapping):
                raise InvalidRequestError(
                    "stores must map location URLs to obstore stores, such as "
                    f"{{'s3://bucket': S3Store('bucket')}}, got {type(stores).__name__}"
                )
            for url, store in stores.items():
                where = ObjectLocation.parse(str(url), what="a key of stores", prefix=True)
                given[where.url.rstrip("/")] = store
        if location is not None or given:
            load_obstore()
        return cls(location, given)

    # -- stores -----------------------------------------------------------------

    def _given_root(self, url: str) -> str | None:
        """The longest location of a given store that holds *url*, if any."""
        best = ""
        for root in self.stores:
            if (url == root or url.startswith(root + "/")) and len(root) > len(best):
                best = root
        return best or None

    def store_for(self, location: ObjectLocation) -> tuple[ObjectStore, str]:
        """The store that holds *location*, and the object's path in that store."""
        url = location.url
        best = self._given_root(url)
        if best is not None:
            return self.stores[best], url[len(best) + 1 :]
        store = self._built.get(location.root)
        if store is None:
            obstore = load_obstore()
            try:
                store = obstore.store.from_url(location.root)
            except Exception as exc:  # a malformed bucket name, an unknown setting
                raise storage_error(exc, "configure", location) from None
            self._built[location.root] = store
        return store, location.key

    def _signing_store(self, location: ObjectLocation, what: str) -> tuple[SigningStore, str]:
        store, key = self.store_for(location)
        from obstore.store import AzureStore, GCSStore, S3Store

        if not isinstance(store, S3Store | GCSStore | AzureStore):
            raise InvalidRequestError(
                f"{what} needs presigned URLs, which a {type(store).__name__} cannot make: "
                f"give an S3Store, GCSStore or AzureStore for {location.root!r}"
            )
        return store, key

    async def _guarded(
        self,
        store: ObjectStore,
        location: ObjectLocation,
        operation: str,
        call: Callable[[], Awaitable[_T]],
    ) -> _T:
        """Run *call*, a call of *store*, as one :class:`StorageError` if it fails.

        Until the store has answered once, calls go one at a time: without
        credentials each would walk the credential chain for seconds, one after
        another inside obstore. Once the chain came up empty, calls fail at once
        (for :data:`NO_CREDENTIALS_HOLD` seconds).
        """
        gate = self._gates.get(id(store))
        if gate is None:
            gate = self._gates[id(store)] = _Gate()
        if not gate.proven:
            async with gate.lock:
                missing = gate.why_missing()
                if missing is not None:
                    raise _failed(operation, location, missing)
                if not gate.proven:
                    return await self._first_call(gate, location, operation, call)
        try:
            return await call()
        except APIError:
            raise
        except Exception as exc:
            raise storage_error(exc, operation, location) from None

    async def _first_call(
        self,
        gate: _Gate,
        location: ObjectLocation,
        operation: str,
        call: Callable[[], Awaitable[_T]],
    ) -> _T:
        try:
            result = await call()
        except APIError:
            raise
        except Exception as exc:
            why = _why(exc, operation, location)
            if classify(exc) is Failure.NO_CREDENTIALS:
                gate.missing = why
                gate.missing_until = asyncio.get_running_loop().time() + NO_CREDENTIALS_HOLD
            else:
                gate.proven = True  # the store answered: credentials were found
            raise _failed(operation, location, why) from None
        gate.proven = True
        return result

    async def _prove(
        self, store: ObjectStore, key: str, location: ObjectLocation, what: str
    ) -> None:
        """Before a long call on a store not yet heard from: a HEAD, to find its credentials.

        A missing object or a denial means the credentials were found; only their
        absence stops here (an upload would otherwise hold the store's first turn).
        """
        gate = self._gates.get(id(store))
        if gate is not None and gate.proven:
            return
        import obstore

        try:
            await self._guarded(store, location, what, lambda: obstore.head_async(store, key))
        except StorageError:
            missing = self._gates[id(store)].why_missing()
            if missing is not None:
                raise

    async def check_readable(self, locations: list[ObjectLocation]) -> StorageError | None:
        """Whether the store of *locations* (objects of one bucket) can be read; ``None``: yes.

        A HEAD of each in turn, until the store answers one: found or not found, the
        credentials work. A denial tries the next (the credentials may lack only that
        object); anything else, missing credentials first, is the answer.

        Raises:
            InvalidRequestError: obstore is not installed.
        """
        obstore = load_obstore()
        error = None
        for location in locations:
            try:
                store, key = self.store_for(location)
            except StorageError as exc:  # no store at all: an Azure account missing, say
                return exc
            try:
                await obstore.head_async(store, key)
            except Exception as exc:
                failure = classify(exc)
                if failure is Failure.MISSING:
                    return None
                error = storage_error(exc, "read", location)
                if failure is not Failure.DENIED:
                    return error
                continue
            return None
        return error

    # -- inputs -----------------------------------------------------------------

    async def prepare(self, image: object, seconds: float) -> Prepared | None:
        """Make *image* sendable: presign an object, stage a file; ``None`` for a URL.

        Raises:
            InvalidRequestError: A local file without a staging location, a missing
                file, a malformed object URL, or obstore missing.
            StorageError: The store refused (no such object, access denied, ...).
        """
        kind = route(image)
        if kind is Route.URL:
            return None
        if kind is Route.OBJECT:
            assert isinstance(image, str)
            location = ObjectLocation.parse(image, what="image")
            return Prepared(await self._presign_input(location, seconds), image)
        return await self._stage(image, seconds)

    async def _presign_input(self, location: ObjectLocation, seconds: float) -> str:
        store, key = self._signing_store(location, f"image {location.url!r}")
        import obstore

        # Checked first: a missing object would otherwise cost a billed API call that
        # fails with the server's less helpful message.
        await self._guarded(store, location, "read", lambda: obstore.head_async(store, key))
        expires = timedelta(seconds=seconds)
        url: str = await self._guarded(
            store, location, "read", lambda: obstore.sign_async(store, "GET", key, expires)
        )
        return url

    async def _stage(self, image: object, seconds: float) -> Prepared:
        assert isinstance(image, str | os.PathLike), "route() tells files by these types"
        source = image if isinstance(image, str) else os.fsdecode(image)
        if source.lower().startswith("file://"):
            path = Path(_file_url_path(source))
        else:
            path = Path(source)
        if self.staging is None:
            if "://" in source:  # a URL gone wrong: say what is wrong with it
                try:
                    validate_image_url(source)
                except InvalidRequestError as exc:
                    raise InvalidRequestError(f"{exc}; {_STAGING_HINT}") from None
            # A path, spaces and all: the URL rules (no spaces) are not what it breaks.
            shown = excerpt(repr(source), 80)
            raise InvalidRequestError(
                f"image must be an absolute http(s) URL with a host, got {shown}; {_STAGING_HINT}"
            )
        if not path.is_file():
            raise InvalidRequestError(
                f"image {str(source)!r} is neither an http(s) URL nor an existing file"
            )
        location = self.staging.child(f"{secrets.token_hex(16)}/{_safe_name(path.name)}")
        store, key = self._signing_store(location, "staging")
        import obstore

        attributes: Any = {"Content-Type": mimetypes.guess_type(path.name)[0] or _UNKNOWN_TYPE}
        await self._prove(store, key, location, "stage")
        await self._guarded(
            store, location, "stage", lambda: _upload_file(store, key, path, attributes)
        )
        prepared = Prepared("", str(source), (store, key, location.url))
        expires = timedelta(seconds=seconds)
        try:
            prepared.url = await self._guarded(
                store, location, "stage", lambda: obstore.sign_async(store, "GET", key, expires)
            )
        except StorageError:
            await prepared.release()
            raise
        logger.debug("staged %s as %s", source, location.url)
        return prepared

    # -- results ------------------------------------------------------------------

    async def write(
        self,
        session: aiohttp.ClientSession,
        url: str,
        target: str,
        *,
        limit: int,
        timeout: aiohttp.ClientTimeout,
        policy: RetryPolicy,
        allow_insecure_http: bool,
        proxies: EnvProxies | None = None,
    ) -> str:
        """Stream the image at *url* into the object *target*; return *target*.

        A result of at most :data:`PART_SIZE` bytes is written in one put, a larger one
        as a multipart upload completed only once the whole image arrived and passed
        the download's checks (``_download.ImageBody``, the same as for a file); the
        upload is aborted otherwise. No partial object is ever visible. Failures of the
        download, a body cut short included, are retried like API calls.

        Raises:
            StorageError: The store refused the write.
            APIError: The download failed (see :meth:`MonicaClient.download`).
        """
        location = ObjectLocation.parse(target, what="path")
        url = _download.checked_source(url, allow_insecure_http)
        store, key = self.store_for(location)
        proxy = None if proxies is None else proxies.for_url(url)
        await self._prove(store, key, location, "write")

        async def attempt(number: int) -> str:
            async with _download.image_body(
                session, url, limit=limit, timeout=timeout, proxy=proxy
            ) as body:
                await self._guarded(store, location, "write", lambda: _put_body(store, key, body))
            return target

        written = await _retry.retrying(
            lambda number: _download.logged_attempt(attempt(number), url, target, number),
            policy,
            what=lambda: f"download {loggable_url(url)} to {target}",
        )
        logger.debug("wrote %s", target)
        return written

    async def abort_unfinished(
        self, prefix: ObjectLocation, wanted: Callable[[str], bool]
    ) -> int | None:
        """Abort the unfinished multipart uploads of objects right under *prefix*.

        Only those whose name (the key less *prefix*) *wanted* accepts. S3 only, with
        the store built from the environment (see ``_s3uploads``): ``None`` for a
        location of another cloud or a store given by the user.

        Returns:
            How many uploads were aborted.

        Raises:
            StorageError: The uploads could not be listed, or one not aborted.
        """
        if prefix.family != "s3" or self._given_root(prefix.url) is not None:
            return None
        from . import _s3uploads

        bucket = prefix.root.split("://", 1)[1]
        aborted = 0
        try:
            settings = _s3uploads.S3Settings.from_environment()
            async with aiohttp.ClientSession() as session:
                uploads = await _s3uploads.list_uploads(session, settings, bucket, prefix.key)
                for upload in uploads:
                    name = upload.key[len(prefix.key) :]
                    if "/" in name or not wanted(name):
                        continue
                    await _s3uploads.abort_upload(session, settings, bucket, upload)
                    aborted += 1
        except (
            InvalidRequestError,
            _s3uploads.S3RequestError,
            aiohttp.ClientError,
            TimeoutError,
            SyntaxError,  # ElementTree.ParseError: not the XML of a listing
        ) as exc:
            why = excerpt(redact(str(exc)) or type(exc).__name__, 300)
            raise StorageError(
                f"cleaning unfinished uploads under {prefix.url} failed after {aborted} "
                f"aborted: {why}",
                url=prefix.url,
                operation="clean",
            ) from None
        return aborted

    async def check_writable(self, prefix: ObjectLocation) -> None:
        """Write and delete a small object under *prefix*: fail now if nothing could be written.

        Raises:
            StorageError: The bucket is missing, or the credentials are missing, refused
                or may not write there.
        """
        location = prefix.child(CHECK_NAME)
        store, key = self.store_for(location)
        import obstore

        await self._guarded(store, location, "check", lambda: obstore.put_async(store, key, b""))
        try:
            await obstore.delete_async(store, key)
        except Exception as exc:  # may write but not delete: writing is what counts
            logger.debug("could not delete %s: %s", location.url, excerpt(redact(str(exc)), 200))


async def _put_body(store: ObjectStore, key: str, body: _download.ImageBody) -> None:
    import obstore

    chunks = body.chunks()
    try:
        head = bytearray()
        ended = True
        async for chunk in chunks:
            head += chunk
            if len(head) > PART_SIZE:
                ended = False
                break
        attributes: Any = {"Content-Type": _media_type(body.content_type, bytes(head[:16]))}
        if ended:
            await body.confirm(head)
            await obstore.put_async(store, key, head, attributes=attributes)
        else:
            # The upload completes when this iterator ends, and is aborted if it raises:
            # the body's checks run at its end, before it stops. (A body only Pillow
            # could vouch for, a TIFF without Content-Length, is taken as it came: its
            # bytes are not kept to decode.)
            await _put_stream(store, key, _continued(head, chunks), attributes)
    finally:
        # Past an abort that timed out, the generator may still be inside a step and
        # cannot be closed; the response under it is released by image_body.
        if not getattr(chunks, "ag_running", False):
            await chunks.aclose()


async def _upload_file(store: ObjectStore, key: str, path: Path, attributes: Any) -> None:
    """Upload the file at *path*: in one put, or in parts aborted if anything fails."""
    import obstore

    if (await asyncio.to_thread(path.stat)).st_size <= PART_SIZE:
        data = await asyncio.to_thread(path.read_bytes)
        await obstore.put_async(store, key, data, attributes=attributes)
    else:
        await _put_stream(store, key, _file_pieces(path), attributes)


async def _file_pieces(path: Path) -> AsyncIterator[bytes]:
    with open(path, "rb") as file:  # noqa: ASYNC230 - opening is quick; reads are threaded
        while piece := await asyncio.to_thread(file.read, PART_SIZE):
            yield piece


class _UploadAborted(Exception):
    """Raised by a :class:`_Feed` that was aborted: obstore then aborts the upload."""


class _Feed:
    """The pieces of a multipart upload, which :meth:`abort` makes fail at once.

    obstore aborts an upload whose iterator raises, and leaves it open (its parts
    kept, and billed) when its call is cancelled: so a cancelled write is turned into
    a failing feed, and waited for.
    """

    def __init__(self, pieces: AsyncIterator[bytes]) -> None:
        self._pieces = pieces
        self._step: asyncio.Future[bytes | None] | None = None
        self._aborted = False

    def __aiter__(self) -> _Feed:
        return self

    async def __anext__(self) -> bytes:
        if self._aborted:
            raise _UploadAborted("the upload was cancelled")
        # A task of its own, so that abort() can end a step waiting for the network.
        self._step = step = asyncio.ensure_future(_next_piece(self._pieces))
        try:
            piece = await step
        except asyncio.CancelledError:
            if self._aborted:
                raise _UploadAborted("the upload was cancelled") from None
            step.cancel()
            raise
        if piece is None:
            raise StopAsyncIteration
        return piece

    def abort(self) -> None:
        """Make the step under way, or else the next one, raise."""
        self._aborted = True
        if self._step is not None:
            self._step.cancel()


async def _next_piece(pieces: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await anext(pieces)
    except StopAsyncIteration:  # not raised through a task: asyncio refuses it
        return None


async def _put_stream(
    store: ObjectStore, key: str, pieces: AsyncIterator[bytes], attributes: Any
) -> None:
    """A multipart upload of *pieces*, completed when they end.

    Aborted when they raise (obstore does it) and when the caller is cancelled: the
    upload is then shielded from the cancellation, its feed made to fail, and the
    abort waited for (at most :data:`ABORT_WAIT` seconds, more cancellations
    notwithstanding) before the cancellation goes on.
    """
    import obstore

    feed = _Feed(pieces)
    put = asyncio.ensure_future(
        obstore.put_async(
            store,
            key,
            feed,
            attributes=attributes,
            chunk_size=PART_SIZE,
            max_concurrency=UPLOAD_CONCURRENCY,
        )
    )
    try:
        await asyncio.shield(put)
    except asyncio.CancelledError:
        feed.abort()
        await _settle(put, key)
        raise


async def _settle(put: asyncio.Future[Any], key: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ABORT_WAIT
    while not put.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            logger.warning(
                "the cancelled upload of %s was not aborted within %gs: its parts may stay "
                "until a lifecycle rule or --resume removes them",
                key,
                ABORT_WAIT,
            )
            put.add_done_callback(_retrieve)
            return
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({put}, timeout=remaining)
    _retrieve(put)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark the outcome of a future as seen: the cancellation is what its caller reports."""
    if not future.cancelled():
        future.exception()


async def _continued(head: bytearray, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """*head*, then *rest* gathered into pieces of about a MiB.

    Each piece handed over costs a hop between the store's runtime and the event loop;
    the body's own chunks are 64 KiB.
    """
    yield bytes(head)
    del head[:]
    piece = bytearray()
    async for chunk in rest:
        piece += chunk
        if len(piece) >= _PIECE:
            yield bytes(piece)
            piece.clear()
    if piece:
        yield bytes(piece)


def _media_type(announced: str, first: bytes) -> str:
    if announced.startswith("image/"):
        return announced.split(";", 1)[0].strip()
    for signature, kind in _SIGNATURES:
        if first.startswith(signature):
            return kind
    if first.startswith(b"RIFF") and first[8:12] == b"WEBP":
        return "image/webp"
    return _UNKNOWN_TYPE


_SIGNATURES: Final = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


def _safe_name(name: str) -> str:
    return _UNSAFE_NAME.sub("_", name).strip("._-")[:100] or "image"


def _file_url_path(url: str) -> str:
    from urllib.request import url2pathname

    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise InvalidRequestError(f"image {url!r} is a file URL of another host")
    return url2pathname(parts.path)
