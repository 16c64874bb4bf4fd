"""Agents: participants that run code (AI models, IVRs) instead of a camera and a microphone.

``service`` runs in the main process (dispatch, job supervision, the Twirp service);
``sdk`` is what agent job processes import (``from roomline_agents.sdk import JobContext``);
``examples`` are the built-in agents; ``control`` is the channel between the two processes.
"""
