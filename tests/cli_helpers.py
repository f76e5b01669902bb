"""monica-upscale as a real process, for the command line's end-to-end tests.

A plain module, imported by the test modules that run ``python -m monica_async`` in a
subprocess while their fake server answers in the test's own event loop. Each module
makes one :class:`Cli` with its own API key (``cli = Cli(KEY)``) and runs the command
through it; :func:`Cli.finish` also waits for any other process a test starts.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import IO, Any

import attrs

#: A bound on how long a process may take before the test gives up: never a speed check.
PROCESS_TIMEOUT = 45.0
#: How a test starts the command line: the package of the interpreter running the tests.
COMMAND = (sys.executable, "-m", "monica_async")

#: What a process's standard stream may be: a constant of ``asyncio.subprocess``, a file
#: descriptor (one end of an ``os.pipe()``) or an open file.
Stream = int | IO[Any]


@attrs.frozen
class Finished:
    """A process that ended: its status and what it printed.

    A stream the process was not given a pipe for reads as ``""``.
    """

    code: int
    out: str
    err: str


@attrs.frozen
class Cli:
    """Runs ``python -m monica_async`` with *api_key* and nothing else of the caller's.

    Args:
        api_key: The ``MONICA_API_KEY`` of every process started without an explicit env.
        timeout: Seconds :meth:`finish` waits for a process before killing it and failing.
        cleared: Prefixes of the variables of this process's environment that a child does
            not inherit, so that no setting of the machine running the tests leaks in.
    """

    api_key: str = attrs.field(repr=False)
    timeout: float = PROCESS_TIMEOUT
    cleared: tuple[str, ...] = ("MONICA_",)

    def env(self, **extra: str) -> dict[str, str]:
        """This process's environment less the cleared variables, with the key and *extra*.

        Built at each call, so a variable a test sets with ``monkeypatch`` is inherited.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith(self.cleared)}
        env["MONICA_API_KEY"] = self.api_key
        env.update(extra)
        return env

    async def spawn(
        self,
        *args: str,
        cwd: Path,
        env: dict[str, str] | None = None,
        stdin: Stream = asyncio.subprocess.DEVNULL,
        stdout: Stream = asyncio.subprocess.PIPE,
    ) -> asyncio.subprocess.Process:
        """Start ``monica-upscale *args`` in *cwd*, stderr piped.

        Args:
            env: The whole environment of the process; :meth:`env` when left out.
            stdin: Nothing to read unless a test passes a pipe (``-`` reads the inputs).
            stdout: Piped unless a test passes one end of a pipe of its own.
        """
        return await asyncio.create_subprocess_exec(
            *COMMAND,
            *args,
            cwd=cwd,
            env=self.env() if env is None else env,
            stdin=stdin,
            stdout=stdout,
            stderr=asyncio.subprocess.PIPE,
        )

    async def finish(
        self, process: asyncio.subprocess.Process, data: bytes | None = None
    ) -> Finished:
        """Send *data* to *process*'s stdin (when piped), then wait for it to end.

        Raises:
            TimeoutError: The process was still running after :attr:`timeout` seconds; it
                is killed first, so that no process outlives its test.
        """
        try:
            out, err = await asyncio.wait_for(process.communicate(data), self.timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        assert process.returncode is not None
        return Finished(process.returncode, (out or b"").decode(), (err or b"").decode())

    async def run(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> Finished:
        """Run ``monica-upscale *args`` in *cwd* to its end (see :meth:`spawn`)."""
        return await self.finish(await self.spawn(*args, cwd=cwd, env=env))
