"""Results saved to a bucket: MB/s and peak RSS, 4096x4096 outputs.

``client.download(result, "s3://...")`` streams a result into an object; next to it,
a raw obstore put of the same bytes (read into memory first, as a program that holds
the image would do) and, for reference, ``client.download`` to a local file.

The S3 server (moto, in its own process), a static file server standing in for the
API's result host (Python's ``http.server``, in its own process) and each way of
saving (a fresh child process, so that its peak RSS, the kernel's ``VmHWM``, is its
own) all run on 127.0.0.1. The result is a 4096x4096 PNG of noise: the largest
output the API makes, and about the largest such a PNG gets.

    python -m benchmarks --only storage
    python -m benchmarks.bench_storage --child MODE URL FILE COUNT  # one way of saving
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from monica_async import MonicaClient

from ._common import Json, Table, median, peak_rss_bytes, rss_bytes

NAME = "storage"

SIDE = 4096
BUCKET = "bench-results"
MIB = 1024 * 1024
#: The ways of saving a result, in the order shown.
MODES = {
    "download-to-bucket": "client.download(result, 's3://...')",
    "obstore-put": "obstore.put_async(store, key, bytes)",
    "download-to-file": "client.download(result, 'out.png')",
}
_START_TIMEOUT = 60.0
# urllib honours *_proxy variables; the servers are on loopback and must be reached directly.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"a server did not start on port {port}") from None
            time.sleep(0.05)


@contextmanager
def _serving(argv: list[str], port: int) -> Iterator[None]:
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port, process)
        yield
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def aws_environment(endpoint: str) -> dict[str, str]:
    """Variables that point obstore at the local S3 server (and nowhere else)."""
    return {
        "AWS_ACCESS_KEY_ID": "bench-key",
        "AWS_SECRET_ACCESS_KEY": "bench-secret",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_METADATA_ENDPOINT": f"http://127.0.0.1:{_free_port()}",
    }


def make_result(path: Path) -> int:
    """Write a 4096x4096 PNG of noise to *path*; return its size in bytes."""
    from PIL import Image

    picture = Image.frombytes("RGB", (SIDE, SIDE), os.urandom(SIDE * SIDE * 3))
    picture.save(path, format="PNG", compress_level=1)
    return path.stat().st_size


async def _child(mode: str, url: str, file: str, count: int) -> Json:
    import obstore
    from obstore.store import from_url

    store = from_url(f"s3://{BUCKET}")
    seconds: list[float] = []
    async with MonicaClient("bench-key", base_url="http://127.0.0.1:9") as client:
        start = rss_bytes()
        # What a raw put needs: the whole image in memory (counted in its peak).
        data = Path(file).read_bytes() if mode == "obstore-put" else b""
        with tempfile.TemporaryDirectory() as folder:
            for i in range(count):
                key = f"out/{mode}-{i}.png"
                began = time.perf_counter()
                if mode == "download-to-bucket":
                    await client.download(url, f"s3://{BUCKET}/{key}")
                elif mode == "obstore-put":
                    await obstore.put_async(store, key, data)
                else:
                    await client.download(url, Path(folder) / "out.png")
                seconds.append(time.perf_counter() - began)
                if mode != "download-to-file":
                    await obstore.delete_async(store, key)
    return {
        "mode": mode,
        "count": count,
        "seconds": seconds,
        "rss_start": start,
        "rss_peak": peak_rss_bytes(),
    }


def measure(mode: str, url: str, file: Path, count: int, env: dict[str, str]) -> Json:
    """Save the result *count* times one way, in a fresh process; its figures."""
    argv = [sys.executable, "-m", "benchmarks.bench_storage", "--child", mode, url, str(file)]
    done = subprocess.run(
        [*argv, str(count)], capture_output=True, text=True, check=False, env={**os.environ, **env}
    )
    if done.returncode != 0:
        raise RuntimeError(f"storage child {mode} failed:\n{done.stderr}")
    result: Json = json.loads(done.stdout.splitlines()[-1])
    return result


def run(quick: bool) -> Json:
    """Each way of saving, 2 (quick) or 5 results, one after another."""
    count = 2 if quick else 5
    with tempfile.TemporaryDirectory() as folder:
        result_file = Path(folder) / "result.png"
        size = make_result(result_file)
        s3_port, files_port = _free_port(), _free_port()
        endpoint = f"http://127.0.0.1:{s3_port}"
        moto = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)]
        files = [sys.executable, "-m", "http.server", str(files_port), "--bind", "127.0.0.1"]
        with _serving(moto, s3_port), _serving([*files, "--directory", folder], files_port):
            request = urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT")
            _DIRECT.open(request, timeout=30).read()
            url = f"http://127.0.0.1:{files_port}/result.png"
            env = aws_environment(endpoint)
            rows = [measure(mode, url, result_file, count, env) for mode in MODES]
    for row in rows:
        row["mb_per_s"] = size / MIB / median(row["seconds"])
    return {"side": SIDE, "size": size, "count": count, "rows": rows}


def table(result: Json) -> str:
    """Render :func:`run`'s result."""
    out = Table(
        f"A {result['side']}x{result['side']} result ({result['size'] / MIB:.1f} MiB PNG) saved "
        f"{result['count']} times, each way in a fresh process",
        ["way", "MiB/s (median)", "RSS start MiB", "RSS peak MiB", "growth MiB"],
    )
    for row in result["rows"]:
        out.add(
            MODES[row["mode"]],
            row["mb_per_s"],
            row["rss_start"] / MIB,
            row["rss_peak"] / MIB,
            (row["rss_peak"] - row["rss_start"]) / MIB,
        )
    out.note("growth: peak RSS minus RSS once imports are done and the client is open.")
    out.note("S3 is moto on loopback, a Python server: its speed bounds both bucket rows.")
    out.note(
        "The raw put holds the whole image in memory, as it must; download-to-bucket "
        "streams it (a part being filled, two being uploaded)."
    )
    return out.render()


def main() -> None:
    """``--child MODE URL FILE COUNT``: save one way and print the figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_storage")
    parser.add_argument("--child", choices=list(MODES), required=True)
    parser.add_argument("url")
    parser.add_argument("file")
    parser.add_argument("count", type=int)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_child(args.child, args.url, args.file, args.count))))


if __name__ == "__main__":
    main()
