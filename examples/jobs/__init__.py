"""Upscales as jobs on a queue: a web front that answers at once, workers under one limit.

    python -m examples.jobs web --port 8000      # POST /jobs, GET /jobs/{id}
    python -m examples.jobs worker               # as many as you like, anywhere
    python -m examples.jobs batch urls.txt       # a file of URLs through the queue

The queue is streaq (Redis streams); the key's rate is shared by every worker through
monica-async's ``RedisRateLimit``, on the same Redis. Configuration comes from the
environment: ``MONICA_API_KEY``, ``MONICA_BASE_URL``, ``REDIS_URL``, ``MONICA_RATE``
(``10/min``) and ``MONICA_IN_FLIGHT`` (``8``). See docs/jobs.md. Needs the ``examples``
extra (streaq and redis).
"""
