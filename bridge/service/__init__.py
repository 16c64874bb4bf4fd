"""The SIP bridge's control plane, in the main process: trunks, dispatch rules, INVITE decisions,
the SIP Twirp service and the supervisor of the worker processes. No media passes through here.
"""
