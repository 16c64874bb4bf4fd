"""roomline SIP bridge: pjsua2 worker processes that join callers to rooms."""
