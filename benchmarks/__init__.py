"""Benchmarks: programs that print figures measured side by side in one run.

Every benchmark talks to the fake Monica server (``python -m monica_async.testing``)
in a process of its own on 127.0.0.1. Run them all with ``python -m benchmarks``;
see ``docs/benchmarks.md`` for the latest figures and how to read them.
"""
