#!/bin/bash
# Bridge soak (issue 13): `roomline serve` with the default config (LAN trunk, `ivr` agent per
# caller) on private ports, SIPp keeping CONC calls of CALL_S seconds up (PCMU tone RTP) for
# about DURATION seconds. Reports worker exits/signals, failed calls and worker RSS/fds.
#   bench/soak_bridge.sh OUTDIR [DURATION=300] [CONC=4] [CALL_S=9] [BASE=27000]
set -u
OUT=${1:?outdir}; DURATION=${2:-300}; CONC=${3:-4}; CALL_S=${4:-9}; BASE=${5:-27000}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-/work/main/.venv/bin/python}
mkdir -p "$OUT"; rm -rf "$OUT/data"
HTTP=$((BASE + 880)); SIP=$((BASE + 60)); RTP0=$((BASE + 100)); RTP1=$((BASE + 199))
WRTC0=$((BASE + 200)); WRTC1=$((BASE + 299)); SIPP_PORT=$((BASE + 61)); SIPP_MEDIA=$((BASE + 400))
sed -e "s/^  port: 7880/  port: $HTTP/" -e "s#data_dir: ./data#data_dir: $OUT/data#" \
    -e "s/port_range_start: 50000/port_range_start: $WRTC0/" -e "s/port_range_end: 50999/port_range_end: $WRTC1/" \
    -e "s/- sip_port: 5060/- sip_port: $SIP/" -e "s/rtp_port_start: 10000/rtp_port_start: $RTP0/" \
    -e "s/rtp_port_end: 10999/rtp_port_end: $RTP1/" -e "s/bind_address: 0.0.0.0/bind_address: 127.0.0.1/" \
    "$HERE/config/roomline.yaml" > "$OUT/roomline.yaml"
cd "$HERE"
PYTHONPATH=$HERE $PY - "$OUT" "$CALL_S" <<'PYEOF'
import sys
from tests.sip.pcap import RtpStream
from tests.sip.sipp import uac_scenario
out, call_s = sys.argv[1], float(sys.argv[2])
s = RtpStream(); s.tone(1000, call_s, pt=0); s.write(f"{out}/tone.pcap")
uac_scenario(f"{out}/uac.xml", pcap=f"{out}/tone.pcap", play_ms=int(call_s * 1000))
PYEOF
PYTHONPATH=$HERE timeout $((DURATION + 120)) $PY -m sfu.cli serve --config "$OUT/roomline.yaml" \
    --log-format console > "$OUT/serve.log" 2>&1 &
SERVE=$!
wpid() { pgrep -f "bridge.worker --sip-port $SIP" | head -1; }
for _ in $(seq 60); do [ -n "$(wpid)" ] && break; sleep 1; done
sleep 5
stat() { local p; p=$(wpid); [ -n "$p" ] && echo "pid=$p rss_kb=$(awk '/VmRSS/{print $2}' /proc/$p/status) fds=$(ls /proc/$p/fd | wc -l)"; }
echo "start: $(stat)" | tee "$OUT/stats.txt"
( while sleep 30; do echo "$(date -u +%T) $(stat)"; done ) > "$OUT/rss.txt" 2>/dev/null &
SAMPLER=$!
CALLS=$(( DURATION * CONC / (CALL_S + 1) ))
timeout $((DURATION + 90)) sipp -sf "$OUT/uac.xml" 127.0.0.1:$SIP -s room -i 127.0.0.1 -p $SIPP_PORT \
    -mi 127.0.0.1 -mp $SIPP_MEDIA -m $CALLS -l $CONC -r 1 -nostdin -timeout $((DURATION + 60))s \
    -timeout_error -trace_stat -stf "$OUT/sipp_stat.csv" -trace_err -error_file "$OUT/sipp_err.log" \
    > "$OUT/sipp.out" 2>&1
echo "sipp rc=$?" | tee -a "$OUT/stats.txt"
echo "end: $(stat)" | tee -a "$OUT/stats.txt"
kill $SAMPLER 2>/dev/null
kill -INT $SERVE; sleep 5; kill $SERVE 2>/dev/null; wait $SERVE 2>/dev/null
grep -E "Successful call|Failed call" "$OUT/sipp.out" | tail -2 | tee -a "$OUT/stats.txt"
echo "worker exits: $(grep -c 'bridge worker on port .* exited' "$OUT/serve.log")" | tee -a "$OUT/stats.txt"
grep -E "exited|died|SIGSEGV|Fatal Python|Segmentation" "$OUT/serve.log" | head -20 | tee -a "$OUT/stats.txt"
