// A voice conversation through the official client's own WebSocketConnection class (the one its
// browser entry uses), with PCM16 audio streamed in real time the way the browser does it:
// 25 ms chunks (800 bytes at 16 kHz), speech (a tone burst), then silence. While the agent's reply
// is playing it barges in with a second burst. Answers pings, as Conversation does.
// Usage: node --experimental-websocket voice_connection.mjs PORT [AGENT_ID]
// Prints one JSON object: what the client saw.
import { WebSocketConnection } from "@elevenlabs/client";

const [port, agentId = "scripted_voice"] = process.argv.slice(2);
const SR = 16000, CHUNK_MS = 25, CHUNK_SAMPLES = (SR * CHUNK_MS) / 1000; // 400 samples = 800 bytes
const t0 = performance.now();
const now = () => Math.round(performance.now() - t0);

function tone(ms, hz = 220, amp = 0.3) {
  const n = Math.round((SR * ms) / 1000), out = Buffer.alloc(n * 2);
  for (let i = 0; i < n; i++) out.writeInt16LE(Math.round(amp * 32767 * Math.sin((2 * Math.PI * hz * i) / SR)), i * 2);
  return out;
}
const silence = (ms) => Buffer.alloc(Math.round((SR * ms) / 1000) * 2);

const conn = await WebSocketConnection.create({ agentId, origin: `ws://127.0.0.1:${port}`, connectionType: "websocket",
  dynamicVariables: { user_name: "Ana" } });
const out = {
  conversation_id: conn.conversationId, input_format: conn.inputFormat, output_format: conn.outputFormat,
  chunks_sent: 0, chunk_bytes: CHUNK_SAMPLES * 2, pongs: 0, log: [],
  user_transcripts: [], agent_responses: [], corrections: [], interruptions: [], audio: {},
  audio_after_interruption: 0, // audio frames of an interrupted reply received after its interruption
  barge_in_at_ms: null, errors: [], disconnect: null,
};
let firstAudioAt = null;
const interrupted = new Set();
const waiters = [];
const until = (pred, ms, what) => new Promise((resolve, reject) => {
  if (pred()) return resolve();
  const w = { pred, resolve };
  waiters.push(w);
  setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
});

conn.onMessage((ev) => {
  const t = now();
  switch (ev.type) {
    case "ping": conn.sendMessage({ type: "pong", event_id: ev.ping_event.event_id }); out.pongs++; break;
    case "user_transcript": out.user_transcripts.push({ t, ...ev.user_transcription_event }); break;
    case "agent_response": out.agent_responses.push({ t, ...ev.agent_response_event }); break;
    case "agent_response_correction": out.corrections.push({ t, ...ev.agent_response_correction_event }); break;
    case "interruption": {
      const id = ev.interruption_event.event_id;
      out.interruptions.push({ t, event_id: id });
      interrupted.add(id);
      break;
    }
    case "audio": {
      const { event_id: id, audio_base_64: b64 } = ev.audio_event;
      const bytes = Buffer.from(b64, "base64").length;
      const a = (out.audio[id] ??= { frames: 0, bytes: 0, first_ms: t, last_ms: t });
      a.frames++; a.bytes += bytes; a.last_ms = t;
      if (interrupted.has(id)) out.audio_after_interruption++;
      firstAudioAt ??= t;
      break;
    }
    case "error": out.errors.push(ev.error_event); break;
  }
  if (!["audio", "vad_score", "ping", "agent_chat_response_part"].includes(ev.type))
    out.log.push({ t, type: ev.type });
  for (const w of waiters.splice(0)) (w.pred() ? w.resolve() : waiters.push(w));
});
conn.onDisconnect((d) => { out.disconnect = { reason: d.reason, t: now() }; });

// The microphone: a queue of PCM played out in real time, 25 ms a chunk, silence when empty.
let queue = Buffer.alloc(0), sentSamples = 0, stopped = false;
const mic = setInterval(() => {
  const due = Math.floor(((performance.now() - t0) * SR) / 1000 / CHUNK_SAMPLES) * CHUNK_SAMPLES;
  while (!stopped && sentSamples < due) {
    let chunk = queue.subarray(0, CHUNK_SAMPLES * 2);
    queue = queue.subarray(chunk.length);
    if (chunk.length < CHUNK_SAMPLES * 2) chunk = Buffer.concat([chunk, silence(CHUNK_MS).subarray(chunk.length)]);
    conn.sendMessage({ user_audio_chunk: chunk.toString("base64") });
    sentSamples += CHUNK_SAMPLES; out.chunks_sent++;
  }
}, 5);

let failure = null;
try {
  queue = Buffer.concat([silence(200), tone(800)]);                        // turn 1: "What is the weather like?"
  await until(() => out.agent_responses.length >= 1 && firstAudioAt !== null, 8000, "the first reply and its audio");
  await new Promise((r) => setTimeout(r, 400));                            // let the reply play a little
  out.barge_in_at_ms = now();
  queue = Buffer.concat([queue, tone(700, 330)]);                          // turn 2 barges in: "Tell me more."
  await until(() => out.interruptions.length >= 1, 5000, "the interruption");
  await until(() => out.agent_responses.length >= 2, 8000, "the second reply");
  const second = out.agent_responses[1].event_id;
  await until(() => (out.audio[second]?.frames ?? 0) >= 5, 5000, "audio of the second reply");
  await new Promise((r) => setTimeout(r, 300));
} catch (e) {
  failure = String(e.message ?? e);
}
stopped = true;
clearInterval(mic);
conn.close();
out.failure = failure;
out.end_ms = now();
console.log(JSON.stringify(out));
process.exit(0);
