"""``MONICA_LOG=info|debug`` shows the library's log records on stderr."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from monica_async import MonicaClient
from monica_async._logs import LOG_ENV, configure_from_environment
from monica_async.testing import FakeMonicaServer, Fault

KEY = "sk-logs-0123456789-SECRET"
#: A program that makes one call: the first attempt gets a 503, the retry succeeds.
PROGRAM = """
import asyncio, os, sys
import monica_async
from monica_async import MonicaClient

monica_async.set_testing(True)


async def main() -> None:
    async with MonicaClient(os.environ["KEY"], base_url=os.environ["BASE_URL"]) as client:
        await client.upscale("https://img.test/cat.png?signature=hidden")


asyncio.run(main())
"""


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger of the library's tree, restored afterwards."""
    logger = logging.getLogger("monica_async.test-logs")
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


@pytest.mark.parametrize(
    ("value", "level"), [("debug", logging.DEBUG), ("info", logging.INFO), (" INFO ", logging.INFO)]
)
def test_a_known_level_adds_one_stderr_handler(
    logger: logging.Logger, value: str, level: int
) -> None:
    """The logger gets the level and one stderr handler, however often it is configured."""
    first = configure_from_environment({LOG_ENV: value}, logger.name)
    second = configure_from_environment({LOG_ENV: value}, logger.name)

    assert isinstance(first, logging.StreamHandler)
    assert (level, [first], first, sys.stderr) == (
        logger.level,
        logger.handlers,
        second,
        first.stream,
    )


@pytest.mark.parametrize("environ", [{}, {LOG_ENV: ""}, {LOG_ENV: "  "}])
def test_unset_changes_nothing(logger: logging.Logger, environ: dict[str, str]) -> None:
    """Without MONICA_LOG the library's loggers are left to the application."""
    assert (None, [], logging.NOTSET) == (
        configure_from_environment(environ, logger.name),
        logger.handlers,
        logger.level,
    )


def test_an_unknown_value_is_ignored_with_a_warning_naming_the_choices(
    logger: logging.Logger,
) -> None:
    """MONICA_LOG=verbose warns, naming the variable and its values, and changes nothing."""
    with pytest.warns(RuntimeWarning, match=r"MONICA_LOG must be 'info' or 'debug', got 'verbose'"):
        handler = configure_from_environment({LOG_ENV: "verbose"}, logger.name)

    assert (None, []) == (handler, logger.handlers)


@pytest.fixture
async def server() -> AsyncIterator[FakeMonicaServer]:
    """A fake server whose first answer is a 503."""
    async with FakeMonicaServer(api_key=KEY, process_images=False) as server:
        server.queue_faults([Fault.HTTP_503])
        yield server


async def _stderr_of_program(server: FakeMonicaServer, log: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != LOG_ENV}
    env.update(KEY=KEY, BASE_URL=server.base_url)
    if log is not None:
        env[LOG_ENV] = log
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-W", "error", "-c", PROGRAM),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert (0, b"") == (process.returncode, out), err.decode()
    return err.decode()


_LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) (?P<logger>[\w.]+): (?P<message>.*)$")


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        (
            "debug",
            [
                (
                    "DEBUG",
                    r"POST /v1/image/tool/upscale for https://img\.test/cat\.png -> 503 in "
                    r"\d\.\d{3}s \(attempt 1, request id req-\w+\)",
                ),
                ("INFO", r"upscale https://img\.test/cat\.png: retrying in \S+ after HTTP 503 "),
                (
                    "DEBUG",
                    r"POST /v1/image/tool/upscale for https://img\.test/cat\.png -> 200 in "
                    r"\d\.\d{3}s \(attempt 2, request id req-\w+\)",
                ),
            ],
        ),
        ("info", [("INFO", r"upscale https://img\.test/cat\.png: retrying in ")]),
        (None, []),
    ],
)
async def test_a_program_shows_its_records_on_stderr(
    server: FakeMonicaServer, log: str | None, expected: list[tuple[str, str]]
) -> None:
    """A real program logs each attempt at DEBUG and each retry at INFO, and no secret."""
    err = await _stderr_of_program(server, log)
    lines = [_LINE.match(line) for line in err.splitlines()]

    assert all(lines), err
    assert [(level, "monica_async") for level, _ in expected] == [
        (m["level"], m["logger"]) for m in lines if m
    ]
    for (_, pattern), line in zip(expected, lines, strict=True):
        assert line is not None
        assert re.match(pattern, line["message"]), line["message"]
    assert KEY not in err
    assert "signature" not in err


#: The application configures logging itself, after importing the library.
CONFIGURED_PROGRAM = PROGRAM.replace(
    "monica_async.set_testing(True)\n",
    "monica_async.set_testing(True)\n"
    "import logging\n"
    "logging.basicConfig(level=logging.INFO, format='APP %(levelname)s %(message)s')\n",
)


async def test_a_configured_application_gets_each_record_once(server: FakeMonicaServer) -> None:
    """MONICA_LOG=debug with the application's basicConfig(level=INFO): every record is
    printed once, by the application's handler, DEBUG ones included."""
    env = {k: v for k, v in os.environ.items() if k != LOG_ENV}
    env.update(KEY=KEY, BASE_URL=server.base_url, **{LOG_ENV: "debug"})
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-W", "error", "-c", CONFIGURED_PROGRAM),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 30)
    lines = err.decode().splitlines()

    assert 0 == process.returncode, err.decode()
    assert ["APP DEBUG", "APP INFO", "APP DEBUG"] == [line[:9].rstrip() for line in lines]
    assert 3 == len(lines)


def test_monica_log_prints_what_no_other_handler_prints(
    logger: logging.Logger, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler of the application at WARNING leaves the DEBUG and INFO records to
    MONICA_LOG's; the WARNING ones it prints itself, and MONICA_LOG's steps aside."""
    monkeypatch.setattr(logger, "propagate", False)  # out of reach of pytest's own handler
    handler = configure_from_environment({LOG_ENV: "debug"}, logger.name)
    assert handler is not None
    handler.setStream(sys.stdout)
    printed: list[str] = []
    theirs = logging.Handler(logging.WARNING)
    theirs.emit = lambda record: printed.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(theirs)

    for level in (logging.DEBUG, logging.INFO, logging.WARNING):
        logger.log(level, "at %s", logging.getLevelName(level))

    assert ["at WARNING"] == printed
    assert ["at DEBUG", "at INFO"] == [
        line.rsplit(": ", 1)[1] for line in capsys.readouterr().out.splitlines()
    ]


async def test_a_batch_that_stops_sending_says_why_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refused key stops a batch: one WARNING names the error, not the key, however
    many inputs get it."""
    async with (
        FakeMonicaServer(api_key="another-key", process_images=False) as server,
        MonicaClient(KEY, base_url=server.base_url) as client,
    ):
        urls = [f"{server.base_url}/images/{i}.png" for i in range(6)]
        with caplog.at_level(logging.WARNING, logger="monica_async"):
            outcomes = await client.upscale_all(urls, workers=1)

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert 6 == sum(not o.ok for o in outcomes)
    assert 1 == len(warnings), warnings
    assert warnings[0].startswith(
        "batch stopped sending requests after AuthenticationError: HTTP 401"
    )
    assert warnings[0].endswith("every input not yet sent gets this error without a request")
    assert KEY not in caplog.text
