"""The one exception hierarchy of roomline.

Every error the appliance raises on purpose derives from :class:`RoomlineError`. The service edges map
them to wire errors (Twirp codes, signalling ``request_response`` reasons, SIP status codes) through the
``twirp_code`` attribute, so a handler never has to know the concrete class::

    RoomlineError
    ├── ConfigError              bad configuration file, environment or flag
    ├── TokenError               access token missing, malformed, expired or badly signed
    ├── PermissionDenied         the token's grants do not allow the operation
    ├── InvalidRequest           malformed or out-of-range request (protobuf, JSON, SDP, SIP ...)
    │   └── LimitExceeded        a size or count limit from ``limits.*`` was hit
    │       └── RoomFull         max_participants reached
    ├── NotFound
    │   ├── RoomNotFound
    │   ├── ParticipantNotFound
    │   └── TrackNotFound
    ├── Unavailable              a worker or resource is down or at capacity
    └── Unimplemented            a LiveKit API roomline does not offer (yet)
"""

from __future__ import annotations


class RoomlineError(Exception):
    """Root of every error roomline raises deliberately."""

    #: Twirp error code the HTTP edge answers with.
    twirp_code: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(RoomlineError):
    """The configuration (file, environment or flags) is invalid; the message names key and file."""

    twirp_code = "internal"


class TokenError(RoomlineError):
    """An access token could not be verified."""

    twirp_code = "unauthenticated"


class PermissionDenied(RoomlineError):
    """The caller is authenticated but its grants do not allow this operation."""

    twirp_code = "permission_denied"


class InvalidRequest(RoomlineError):
    """A request is malformed or has an invalid value."""

    twirp_code = "invalid_argument"


class LimitExceeded(InvalidRequest):
    """A configured limit (size, count, length) would be exceeded."""

    twirp_code = "resource_exhausted"


class RoomFull(LimitExceeded):
    """The room already holds max_participants participants."""


class NotFound(RoomlineError):
    """A named object does not exist."""

    twirp_code = "not_found"


class RoomNotFound(NotFound):
    def __init__(self, room: str) -> None:
        super().__init__("requested room does not exist")
        self.room = room


class ParticipantNotFound(NotFound):
    def __init__(self, identity: str) -> None:
        super().__init__("participant does not exist")
        self.identity = identity


class TrackNotFound(NotFound):
    def __init__(self, track_sid: str) -> None:
        super().__init__(f"track {track_sid} does not exist")
        self.track_sid = track_sid


class Unavailable(RoomlineError):
    """A worker or resource is down or at capacity; retrying later may succeed."""

    twirp_code = "unavailable"


class Unimplemented(RoomlineError):
    """The request is valid LiveKit API, but roomline does not implement it."""

    twirp_code = "unimplemented"
