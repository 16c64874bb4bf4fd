"""The little SDP the signalling layer must read itself (aiortc's track ids are unreliable).

From a publisher offer we need, per m-section: the kind, the mid, the direction and the msid track id —
the ``cid`` the client already sent in its ``AddTrackRequest``, which is how an m-section is matched to
its publication. Parsing is tolerant of unknown lines but strict about structure: anything that is not
an SDP raises :class:`SdpError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from roomline.errors import InvalidRequest

#: Large enough for any real offer (Chrome with 6 m-lines is ~10 KB), small enough to bound work.
MAX_SDP_SIZE = 256 * 1024

_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


class SdpError(InvalidRequest):
    """A session description is malformed."""


@dataclass(frozen=True, slots=True)
class MediaSection:
    """One m-section as the publisher described it."""

    index: int
    kind: str
    mid: str
    direction: str
    #: The msid track id (the client's cid), or "" if the section has no msid.
    track_id: str
    stream_id: str
    codecs: tuple[str, ...]
    port: int
    #: ``a=bundle-only``: port 0 then means "use the bundle transport", not "rejected" (RFC 8843).
    bundle_only: bool = False

    @property
    def sending(self) -> bool:
        """True if the offerer sends media in this section (it publishes a track)."""
        active = self.port != 0 or self.bundle_only
        return self.direction in ("sendrecv", "sendonly") and active


def parse_media_sections(sdp: str) -> list[MediaSection]:
    """Return the m-sections of ``sdp`` in order."""
    if len(sdp) > MAX_SDP_SIZE:
        raise SdpError(f"SDP larger than {MAX_SDP_SIZE} bytes")
    lines = sdp.replace("\r\n", "\n").split("\n")
    if not lines or not lines[0].startswith("v="):
        raise SdpError("SDP must start with v=")
    sections: list[MediaSection] = []
    current: dict[str, object] | None = None
    session_direction = "sendrecv"

    def finish() -> None:
        if current is not None:
            sections.append(
                MediaSection(
                    index=len(sections),
                    kind=str(current["kind"]),
                    mid=str(current.get("mid", "")),
                    direction=str(current.get("direction", session_direction)),
                    track_id=str(current.get("track_id", "")),
                    stream_id=str(current.get("stream_id", "")),
                    codecs=tuple(current.get("codecs", ())),  # type: ignore[arg-type]
                    port=int(current["port"]),  # type: ignore[call-overload]
                    bundle_only=bool(current.get("bundle_only", False)),
                )
            )

    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"malformed SDP line {line[:40]!r}")
        if line.startswith("m="):
            finish()
            parts = line[2:].split()
            if len(parts) < 4:
                raise SdpError(f"malformed m= line {line[:60]!r}")
            try:
                port = int(parts[1].split("/")[0])
            except ValueError:
                raise SdpError(f"malformed port in {line[:60]!r}") from None
            current = {"kind": parts[0], "port": port, "codecs": []}
            continue
        if not line.startswith("a="):
            continue
        attr = line[2:]
        name, _, value = attr.partition(":")
        if current is None:
            if name in _DIRECTIONS:
                session_direction = name
            continue
        if name in _DIRECTIONS:
            current["direction"] = name
        elif name == "bundle-only":
            current["bundle_only"] = True
        elif name == "mid":
            current["mid"] = value.strip()
        elif name == "msid":
            ids = value.split()
            current["stream_id"] = ids[0] if ids else ""
            current["track_id"] = ids[1] if len(ids) > 1 else ""
        elif name == "ssrc" and "msid:" in value and "track_id" not in current:
            # Plan-B style "a=ssrc:<n> msid:<stream> <track>" (older clients).
            ids = value.split("msid:", 1)[1].split()
            current["stream_id"] = ids[0] if ids else ""
            current["track_id"] = ids[1] if len(ids) > 1 else ""
        elif name == "rtpmap":
            codec = value.split(maxsplit=1)[1].split("/")[0] if " " in value else ""
            current["codecs"].append(codec.lower())  # type: ignore[attr-defined]
    finish()
    if not sections and "m=" not in sdp:
        # A description without media is legal (data-only offers always have m=application).
        return []
    return sections


def advertise_ip(sdp: str, ip: str) -> str:
    """Replace the address of every host candidate (and ``c=`` line) with ``ip``.

    For a server behind 1:1 NAT (``rtc.node_ip``): aioice binds the private address, clients must
    be told the public one. Connectivity checks arriving at the public address reach the same
    socket, so nothing else changes.
    """
    family = "IP6" if ":" in ip else "IP4"
    out: list[str] = []
    for line in sdp.split("\r\n"):
        if line.startswith("c=IN ") and not line.endswith(" 0.0.0.0"):
            line = f"c=IN {family} {ip}"
        elif line.startswith("a=candidate:") and " typ host" in line:
            parts = line.split(" ")
            if len(parts) > 5:
                parts[4] = ip
                line = " ".join(parts)
        out.append(line)
    return "\r\n".join(out)
