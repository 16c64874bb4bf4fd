"""Agents' main-process side: dispatch table, job-process supervisor and AgentDispatchService."""
