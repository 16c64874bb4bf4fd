"""The bridge worker process: pjsua2 SIP endpoint, phone-leg media and the callers' room legs.

Nothing here runs in the main process. The main process talks to a worker only through the
JSON-lines control channel (:mod:`bridge.control`) and the local participant channel.
"""
