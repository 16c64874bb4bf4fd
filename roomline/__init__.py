"""Shared foundation of every roomline process: config, tokens, logging, errors, ids, the JSON-lines
codec and the lifecycle interface of the appliance's parts. It imports no other roomline package."""
