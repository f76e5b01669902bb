"""The command line's checks and clean-up of the buckets a run uses.

Before anything is sent, :func:`check_input_stores` makes sure every store the first
inputs name can be read: without credentials each object would otherwise wait out
the credential chain (seconds) and fail alone, 40 inputs in two minutes, a long job
in days. With ``--resume``, :func:`clean_unfinished_uploads` aborts the multipart
uploads that earlier runs of the same output left unfinished under ``--download-dir``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Final, TextIO

from monica_async._exceptions import InvalidRequestError, StorageError
from monica_async._storage import ObjectLocation, Storage, is_object_url

from ._inputs import InputRecord
from ._options import RunOptions, UsageError
from ._output import download_line

__all__ = ["check_input_stores", "clean_unfinished_uploads"]

#: Objects of one bucket tried before its store is called unreadable: a denial may
#: concern one object only.
PROBES: Final = 3


async def check_input_stores(records: Iterable[InputRecord]) -> None:
    """Stop with a usage error if a store named by *records* cannot be read.

    One HEAD per bucket (a few more if the first objects are denied), all buckets at
    once. A missing object is fine here: it fails its own line later.

    Raises:
        UsageError: A store has no credentials, refuses them, cannot be configured
            or reached, or denies every object tried; or obstore is not installed.
    """
    buckets: dict[str, list[ObjectLocation]] = {}
    for record in records:
        if record.url is None or not is_object_url(record.url):
            continue
        try:
            location = ObjectLocation.parse(record.url, what="image")
        except InvalidRequestError:
            continue  # a malformed object URL fails its own line
        tried = buckets.setdefault(location.root, [])
        if len(tried) < PROBES and location not in tried:
            tried.append(location)
    if not buckets:
        return
    storage = Storage()
    checks = [storage.check_readable(tried) for tried in buckets.values()]
    try:
        errors = await asyncio.gather(*checks)
    except InvalidRequestError as exc:  # obstore is not installed
        raise UsageError(f"the inputs name objects: {exc}") from None
    for root, error in zip(buckets, errors, strict=True):
        if error is not None:
            raise UsageError(f"the inputs name objects in {root}, which cannot be read: {error}")


async def clean_unfinished_uploads(options: RunOptions, err: TextIO) -> None:
    """With ``--resume``, abort the uploads of earlier runs left under ``--download-dir``.

    Theirs are those named as this run names its results (``<line>-<name>-<hash>.png``)
    for lines of this run's shard. Says on *err* how many it aborted; a failure is a
    note, not a stop (the uploads only cost storage).
    """
    if not options.resume or options.download_prefix is None:
        return
    prefix = ObjectLocation.parse(options.download_prefix, what="--download-dir", prefix=True)
    shard = options.shard

    def ours(name: str) -> bool:
        line = download_line(name)
        return line is not None and (shard is None or shard.takes(line))

    try:
        aborted = await Storage().abort_unfinished(prefix, ours)
    except StorageError as exc:
        if options.verbosity >= 0:
            print(f"--resume: {exc}", file=err, flush=True)
        return
    if aborted is not None and options.verbosity >= 0:
        print(
            f"--resume: aborted {aborted} unfinished upload(s) of earlier runs under {prefix.url}",
            file=err,
            flush=True,
        )
