# roomline appliance image. Built with the same .ci/setup the README uses:
#   docker build -t roomline .        or        docker-compose up --build
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    ROOMLINE_SERVER_DATA_DIR=/var/lib/roomline

WORKDIR /opt/roomline
# The SIP front: Kamailio owns the public SIP port and spreads calls over the bridge workers
# (docs/sip-front.md). kamailio-tls-modules adds SIP over TLS on 5061 (sip.tls_cert_file/key_file).
RUN apt-get update \
    && apt-get install -y --no-install-recommends kamailio kamailio-tls-modules \
    && rm -rf /var/lib/apt/lists/*
# .ci/setup hashes pyproject.toml; the rest of the tree is needed for the (editable) install.
COPY . .
RUN .ci/setup \
    && mkdir -p /etc/roomline /var/lib/roomline \
    && cp config/roomline.yaml /etc/roomline/roomline.yaml \
    && useradd --system --home-dir /var/lib/roomline --shell /usr/sbin/nologin roomline \
    && chown roomline:roomline /var/lib/roomline

ENV PATH=/opt/roomline/.venv/bin:$PATH
USER roomline
VOLUME ["/var/lib/roomline"]

# HTTP/WebSocket (signalling, Twirp API), WebRTC media, SIP (the Kamailio front: UDP+TCP, TLS),
# SIP RTP (sip.rtp_port_start..end, split between the workers). Worker ports 5070+ stay inside.
EXPOSE 7880/tcp 50000-50999/udp 5060/udp 5060/tcp 5061/tcp 10000-10999/udp

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7880/healthz', timeout=4)"

ENTRYPOINT ["roomline"]
CMD ["serve", "--config", "/etc/roomline/roomline.yaml"]
