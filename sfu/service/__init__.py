"""Service edge: aiohttp handlers (Twirp, signalling, web page, metrics)."""
