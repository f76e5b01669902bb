"""monica-async: an asyncio client for the Monica Open API Upscale endpoint."""
