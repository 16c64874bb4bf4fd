// roomline built-in page: join a room with livekit-client, publish mic + camera, play remote media,
// list participants. Plain JS on purpose (no build step). State for tests lives on window.roomline.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  const LK = window.LivekitClient;

  // Kind badges; livekit-client exposes participant.kind as the protobuf enum number.
  const KIND_SIP = 3;
  const KIND_AGENT = 4;
  // RMS level (0..1) above which a participant is shown as speaking. The server's speakers_changed
  // (livekit-client's isSpeaking; SIP callers included, from their RFC 6464 levels) is used first;
  // the page's own measurement covers the moment before the first update arrives.
  const SPEAKING_LEVEL = 0.01;

  let room = null;
  let audioCtx = null;
  let sipToken = null; // dev mode: SIP API token from /dev/token (dial out)
  const meters = new Map(); // identity -> {analyser, buffer} for every audio track we can hear/see
  const log = [];
  // Every lk.agent.state value seen per agent identity, in order (consecutive repeats folded).
  const agentStates = new Map();
  // lk.transcription text streams, one entry per segment: {identity, segment, track, text, done}.
  const transcript = [];
  const TRANSCRIPT_MAX = 200;

  function note(message) {
    log.push(`${new Date().toISOString()} ${message}`);
    if (log.length > 200) log.shift();
    console.log(`[roomline] ${message}`);
  }

  function showError(message) {
    const el = $('error');
    el.textContent = message;
    el.hidden = !message;
    state.error = message || null;
    if (message) note(`error: ${message}`);
  }

  function setStatus(text, kind) {
    const el = $('status');
    el.textContent = text;
    el.dataset.state = kind;
  }

  // ------------------------------------------------------------------ participants

  function kindName(p) {
    if (p.kind === KIND_SIP) return 'sip';
    if (p.kind === KIND_AGENT) return 'agent';
    return 'standard';
  }

  const BADGES = { sip: 'phone', agent: 'bot', standard: 'person' };

  function allParticipants() {
    if (!room) return [];
    return [room.localParticipant, ...room.remoteParticipants.values()];
  }

  function level(identity) {
    const meter = meters.get(identity);
    if (!meter) return 0;
    meter.analyser.getFloatTimeDomainData(meter.buffer);
    let sum = 0;
    for (const v of meter.buffer) sum += v * v;
    return Math.sqrt(sum / meter.buffer.length);
  }

  function isSpeaking(p) {
    return p.isSpeaking || level(p.identity) > SPEAKING_LEVEL;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function renderParticipant(p) {
    const kind = kindName(p);
    const attrs = p.attributes || {};
    const li = el('li', 'participant');
    li.dataset.identity = p.identity;
    li.dataset.kind = kind;

    const head = el('div', 'head');
    const badge = el('span', 'badge', BADGES[kind]);
    badge.dataset.kind = kind;
    head.append(badge, el('strong', 'name', p.name || p.identity));
    head.append(el('span', 'identity', p === room.localParticipant ? `${p.identity} (you)` : p.identity));
    const dot = el('span', 'speaking');
    dot.dataset.speaking = String(isSpeaking(p));
    dot.title = 'speaking';
    head.append(dot);
    li.append(head);

    if (kind === 'agent') {
      li.append(el('div', 'detail agent-state', `agent state: ${attrs['lk.agent.state'] || 'unknown'}`));
      const history = agentStates.get(p.identity) || [];
      if (history.length > 1) li.append(el('div', 'detail agent-states', `seen: ${history.join(' → ')}`));
    }
    if (kind === 'sip') li.append(el('div', 'detail sip-number', `phone: ${attrs['sip.phoneNumber'] || 'unknown'}`));

    const tracks = [...p.trackPublications.values()].map((t) => `${t.source}${t.isMuted ? ' (muted)' : ''}`);
    li.append(el('div', 'detail tracks', tracks.length ? `tracks: ${tracks.join(', ')}` : 'no tracks'));

    const keys = Object.keys(attrs).sort();
    if (keys.length) {
      const dl = el('dl', 'attributes');
      for (const key of keys) dl.append(el('dt', '', key), el('dd', '', attrs[key]));
      li.append(dl);
    }
    return li;
  }

  function render() {
    const list = $('participants');
    const participants = allParticipants();
    participants.forEach(recordAgentState);
    list.replaceChildren(...participants.map(renderParticipant));
  }

  // ------------------------------------------------------------------ agents: state and transcription

  function recordAgentState(p) {
    if (kindName(p) !== 'agent') return;
    const value = (p.attributes || {})['lk.agent.state'];
    if (!value) return;
    const seen = agentStates.get(p.identity) || [];
    if (seen[seen.length - 1] === value) return;
    seen.push(value);
    agentStates.set(p.identity, seen);
    note(`agent ${p.identity} state: ${value}`);
  }

  function renderTranscript() {
    $('transcript').replaceChildren(
      ...transcript.map((entry) => {
        const li = el('li', 'line');
        li.dataset.identity = entry.identity;
        li.dataset.done = String(entry.done);
        li.append(el('strong', 'who', `${entry.identity}: `), el('span', 'text', entry.text));
        return li;
      }),
    );
  }

  // Agents send each transcription segment as an lk.transcription text stream: either one stream per
  // segment carrying deltas, or a new stream per update carrying the whole text so far. Both land in
  // one entry per (sender, lk.segment_id); a stream that repeats the segment replaces its text.
  async function readTranscription(reader, from) {
    const attrs = reader.info.attributes || {};
    const identity = from.identity;
    const segment = attrs['lk.segment_id'] || reader.info.id;
    let entry = transcript.find((e) => e.identity === identity && e.segment === segment);
    if (entry) {
      entry.text = '';
      entry.done = false;
    } else {
      entry = { identity, segment, track: attrs['lk.transcribed_track_id'] || null, text: '', done: false };
      transcript.push(entry);
      if (transcript.length > TRANSCRIPT_MAX) transcript.shift();
    }
    try {
      for await (const chunk of reader) {
        entry.text += chunk;
        renderTranscript();
      }
    } catch (err) {
      note(`transcription stream from ${identity} failed: ${err.message || err}`);
    }
    entry.done = true;
    note(`transcription from ${identity}: ${entry.text}`);
    renderTranscript();
  }

  // ------------------------------------------------------------------ media

  function ensureAudioContext() {
    if (!audioCtx) audioCtx = new AudioContext();
    if (audioCtx.state === 'suspended') audioCtx.resume().catch(() => {});
    return audioCtx;
  }

  function addMeter(identity, mediaStreamTrack) {
    const ctx = ensureAudioContext();
    const source = ctx.createMediaStreamSource(new MediaStream([mediaStreamTrack]));
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 2048;
    source.connect(analyser); // not connected to the destination: the <audio> element plays it
    meters.set(identity, { analyser, source, buffer: new Float32Array(analyser.fftSize), track: mediaStreamTrack });
  }

  function removeMeter(identity) {
    const meter = meters.get(identity);
    if (meter) meter.source.disconnect();
    meters.delete(identity);
  }

  function videoTile(track, label, id) {
    const tile = el('div', 'tile');
    tile.id = id;
    const video = track.attach();
    video.muted = true;
    tile.append(video, el('span', '', label));
    $('videos').append(tile);
  }

  function onTrackSubscribed(track, publication, participant) {
    note(`subscribed ${track.kind} from ${participant.identity}`);
    if (track.kind === 'audio') {
      const audio = track.attach();
      audio.dataset.identity = participant.identity;
      $('audio').append(audio);
      // Chromium only feeds a remote WebRTC track into WebAudio while it is also played by an element.
      addMeter(participant.identity, track.mediaStreamTrack);
    } else if (track.kind === 'video') {
      videoTile(track, participant.name || participant.identity, `video-${track.sid}`);
    }
    render();
  }

  function onTrackUnsubscribed(track, publication, participant) {
    track.detach().forEach((node) => node.remove());
    if (track.kind === 'audio') removeMeter(participant.identity);
    const tile = $(`video-${track.sid}`);
    if (tile) tile.remove();
    render();
  }

  function onLocalTrackPublished(publication) {
    const track = publication.track;
    if (track && track.kind === 'video' && !$('video-local')) videoTile(track, 'you', 'video-local');
    if (track && track.kind === 'audio') addMeter(room.localParticipant.identity, track.mediaStreamTrack);
    render();
  }

  // ------------------------------------------------------------------ join / leave

  async function fetchToken(roomName, identity, name) {
    const q = new URLSearchParams({ room: roomName, identity, name });
    const resp = await fetch(`/dev/token?${q}`, { cache: 'no-store' });
    if (resp.status === 404) {
      throw new Error('this appliance has real API keys, so /dev/token is off: paste a token instead');
    }
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error(body.error || `token request failed (HTTP ${resp.status})`);
    sipToken = body.sip_token || null;
    return body.token;
  }

  // ------------------------------------------------------------------ dial out (dev mode)
  // The dev token endpoint also hands out a SIP API token; with it the page lists the outbound
  // trunks and places calls into the current room through the SIP Twirp API (CreateSIPParticipant).

  async function sipApi(method, body) {
    const resp = await fetch(`/twirp/livekit.SIP/${method}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${sipToken}` },
      body: JSON.stringify(body),
    });
    const reply = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      const sip = reply.meta && reply.meta.sip_status_code ? ` (SIP ${reply.meta.sip_status_code})` : '';
      throw new Error(`${reply.msg || `HTTP ${resp.status}`}${sip}`);
    }
    return reply;
  }

  function setDialStatus(status, text, extra) {
    $('dial-status').textContent = text;
    state.dial = { status, text, ...(extra || {}) };
    note(`dial: ${text}`);
  }

  async function showDialForm() {
    if (!sipToken) return;
    try {
      const reply = await sipApi('ListSIPOutboundTrunk', {});
      const trunks = reply.items || [];
      $('dial-trunk').replaceChildren(...trunks.map((t) => {
        const option = el('option', '', `${t.name || t.sipTrunkId} (${t.address})`);
        option.value = t.sipTrunkId;
        return option;
      }));
      state.trunks = trunks.map((t) => t.sipTrunkId);
      $('dial-form').hidden = false;
      $('dial').disabled = !trunks.length;
      setDialStatus('idle', trunks.length ? '' : 'no outbound trunk is configured');
    } catch (err) {
      note(`dial out unavailable: ${err.message || err}`);
    }
  }

  async function dial(event) {
    event.preventDefault();
    if (!room || !sipToken) return;
    const number = $('dial-number').value.trim();
    const trunk = $('dial-trunk').value;
    $('dial').disabled = true;
    setDialStatus('calling', `calling ${number}…`);
    try {
      const info = await sipApi('CreateSIPParticipant', {
        sip_trunk_id: trunk,
        sip_call_to: number,
        room_name: room.name,
      });
      setDialStatus('ok', `${number} joined as ${info.participantIdentity}`, { identity: info.participantIdentity });
    } catch (err) {
      setDialStatus('error', `could not dial ${number}: ${err.message || err}`);
    } finally {
      $('dial').disabled = false;
    }
  }

  async function join(event) {
    event.preventDefault();
    showError('');
    if (!LK) return showError('livekit-client is not installed: run .ci/setup');
    ensureAudioContext(); // created inside the click, so autoplay policies allow it
    const url = $('url').value.trim();
    const roomName = $('room').value.trim();
    const identity = $('identity').value.trim();
    $('join').disabled = true;
    setStatus('connecting', 'connecting');
    state.state = 'connecting';
    try {
      sipToken = null;
      const token = $('token').value.trim() || (await fetchToken(roomName, identity, $('name').value.trim()));
      room = new LK.Room({ adaptiveStream: false, dynacast: false });
      room.registerTextStreamHandler('lk.transcription', (reader, from) => { readTranscription(reader, from); });
      room
        .on(LK.RoomEvent.ParticipantConnected, (p) => { note(`joined: ${p.identity}`); render(); })
        .on(LK.RoomEvent.ParticipantDisconnected, (p) => { note(`left: ${p.identity}`); removeMeter(p.identity); render(); })
        .on(LK.RoomEvent.ParticipantAttributesChanged, (changed, p) => { note(`attributes of ${p.identity}: ${JSON.stringify(changed)}`); render(); })
        .on(LK.RoomEvent.ParticipantMetadataChanged, render)
        .on(LK.RoomEvent.ParticipantNameChanged, render)
        .on(LK.RoomEvent.ActiveSpeakersChanged, render)
        .on(LK.RoomEvent.TrackSubscribed, onTrackSubscribed)
        .on(LK.RoomEvent.TrackUnsubscribed, onTrackUnsubscribed)
        .on(LK.RoomEvent.TrackPublished, render)
        .on(LK.RoomEvent.TrackUnpublished, render)
        .on(LK.RoomEvent.TrackMuted, render)
        .on(LK.RoomEvent.TrackUnmuted, render)
        .on(LK.RoomEvent.LocalTrackPublished, onLocalTrackPublished)
        .on(LK.RoomEvent.MediaDevicesError, (e) => showError(`media device error: ${e.message}`))
        .on(LK.RoomEvent.Disconnected, (reason) => onDisconnected(reason));
      await room.connect(url, token);
      state.connected = true;
      state.state = 'connected';
      setStatus(`connected to ${room.name} as ${identity}`, 'connected');
      note(`connected to ${room.name}`);
      $('join-form').hidden = true;
      $('controls').hidden = false;
      render();
      showDialForm();
      if ($('publish').checked) {
        await room.localParticipant.setMicrophoneEnabled(true);
        await room.localParticipant.setCameraEnabled(true);
      }
      updateButtons();
    } catch (err) {
      showError(`could not join: ${err.message || err}`);
      if (room) await room.disconnect();
      room = null;
      state.state = 'idle';
      setStatus('not connected', 'idle');
    } finally {
      $('join').disabled = false;
    }
  }

  function onDisconnected(reason) {
    note(`disconnected (reason ${reason})`);
    state.connected = false;
    state.state = 'disconnected';
    setStatus('disconnected', 'idle');
    for (const identity of [...meters.keys()]) removeMeter(identity);
    $('videos').replaceChildren();
    $('audio').replaceChildren();
    $('join-form').hidden = false;
    $('controls').hidden = true;
    $('dial-form').hidden = true;
    room = null;
    render();
  }

  function updateButtons() {
    if (!room) return;
    const lp = room.localParticipant;
    $('toggle-mic').textContent = lp.isMicrophoneEnabled ? 'Mute microphone' : 'Unmute microphone';
    $('toggle-cam').textContent = lp.isCameraEnabled ? 'Stop camera' : 'Start camera';
  }

  async function toggle(which) {
    if (!room) return;
    const lp = room.localParticipant;
    try {
      if (which === 'mic') await lp.setMicrophoneEnabled(!lp.isMicrophoneEnabled);
      else await lp.setCameraEnabled(!lp.isCameraEnabled);
    } catch (err) {
      showError(`${which}: ${err.message || err}`);
    }
    updateButtons();
    render();
  }

  // ------------------------------------------------------------------ state for tests and tools

  async function inboundAudioStats() {
    // getStats() view of what the browser receives: max audioLevel over inbound audio RTP streams.
    const out = { audioLevel: 0, packetsReceived: 0, totalSamplesReceived: 0 };
    if (!room) return out;
    for (const p of room.remoteParticipants.values()) {
      for (const pub of p.audioTrackPublications.values()) {
        if (!pub.track || !pub.track.receiver) continue;
        const report = await pub.track.receiver.getStats();
        report.forEach((s) => {
          if (s.type !== 'inbound-rtp' || s.kind !== 'audio') return;
          out.audioLevel = Math.max(out.audioLevel, s.audioLevel || 0);
          out.packetsReceived += s.packetsReceived || 0;
          out.totalSamplesReceived += s.totalSamplesReceived || 0;
        });
      }
    }
    return out;
  }

  const state = {
    connected: false,
    state: 'idle',
    error: null,
    // Dial out: ids of the outbound trunks offered, and the last dial's {status, text, identity}.
    trunks: [],
    dial: null,
    log,
    get room() { return room ? room.name : null; },
    // {identity: [lk.agent.state values in the order they were seen]}
    get agentStates() { return Object.fromEntries([...agentStates].map(([k, v]) => [k, [...v]])); },
    // [{identity, segment, track, text, done}] from lk.transcription text streams
    get transcript() { return transcript.map((e) => ({ ...e })); },
    get participants() {
      return allParticipants().map((p) => ({
        identity: p.identity,
        name: p.name,
        kind: kindName(p),
        local: p === room.localParticipant,
        attributes: { ...(p.attributes || {}) },
        speaking: isSpeaking(p),
        // What the server said (speakers_changed), without the page's own level measurement.
        serverSpeaking: !!p.isSpeaking,
        tracks: [...p.trackPublications.values()].map((t) => ({ source: t.source, kind: t.kind, muted: t.isMuted, subscribed: !!t.track })),
      }));
    },
    // RMS (0..1) of the loudest remote audio track, measured by a WebAudio AnalyserNode.
    remoteAudioLevel() {
      let max = 0;
      for (const identity of meters.keys()) {
        if (room && identity !== room.localParticipant.identity) max = Math.max(max, level(identity));
      }
      return max;
    },
    // Frequency (Hz) of the strongest spectral bin of the loudest remote audio track (0 if none).
    remoteAudioPeakHz() {
      let best = null;
      for (const [identity, meter] of meters) {
        if (room && identity !== room.localParticipant.identity && (!best || level(identity) > level(best[0]))) best = [identity, meter];
      }
      if (!best) return 0;
      const analyser = best[1].analyser;
      const bins = new Float32Array(analyser.frequencyBinCount);
      analyser.getFloatFrequencyData(bins);
      let k = 1;
      for (let i = 2; i < bins.length - 1; i++) if (bins[i] > bins[k]) k = i;
      // Parabolic interpolation on the dB values refines the peak to a fraction of a bin.
      const [a, b, c] = [bins[k - 1], bins[k], bins[k + 1]];
      const shift = a - 2 * b + c ? (0.5 * (a - c)) / (a - 2 * b + c) : 0;
      return ((k + shift) * analyser.context.sampleRate) / analyser.fftSize;
    },
    inboundAudioStats,
  };
  window.roomline = state;

  // ------------------------------------------------------------------ start-up

  const params = new URLSearchParams(location.search);
  $('url').value = params.get('url') || `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}`;
  $('room').value = params.get('room') || '';
  $('identity').value = params.get('identity') || '';
  $('name').value = params.get('name') || '';
  // publish=0 joins to watch and listen only (no microphone or camera).
  $('publish').checked = !['0', 'false', 'no', 'off'].includes((params.get('publish') || '').toLowerCase());
  $('join-form').addEventListener('submit', join);
  $('toggle-mic').addEventListener('click', () => toggle('mic'));
  $('toggle-cam').addEventListener('click', () => toggle('cam'));
  $('leave').addEventListener('click', () => room && room.disconnect());
  $('dial-form').addEventListener('submit', dial);
  // Speaking dots follow measured levels, so refresh them a few times a second while connected.
  setInterval(() => {
    if (!room) return;
    for (const p of allParticipants()) {
      const dot = document.querySelector(`li[data-identity="${CSS.escape(p.identity)}"] .speaking`);
      if (dot) dot.dataset.speaking = String(isSpeaking(p));
    }
  }, 250);

  if (!LK) {
    showError('livekit-client is not installed: run .ci/setup');
    $('join').disabled = true;
  } else {
    note(`livekit-client ${LK.version}`);
  }
})();
