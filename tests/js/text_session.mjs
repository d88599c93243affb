// A text-only session of the official @elevenlabs/client (its Node entry) against an ah server.
// Usage: node --experimental-websocket text_session.mjs PORT [AGENT_ID] [MESSAGE]
// Prints one JSON object per line: every callback the client fired, in order, then {"event":"done"}.
import { Conversation } from "@elevenlabs/client";

const [port, agentId = "scripted_voice", text = "What is the weather like?"] = process.argv.slice(2);
const t0 = Date.now();
const emit = (event, data = {}) => console.log(JSON.stringify({ event, t_ms: Date.now() - t0, ...data }));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let responded;
const gotResponse = new Promise((r) => (responded = r));
const timer = setTimeout(() => { emit("timeout"); process.exit(2); }, 15000);

const conv = await Conversation.startSession({
  agentId,
  origin: `ws://127.0.0.1:${port}`,
  connectionType: "websocket",
  textOnly: true,
  dynamicVariables: { user_name: "Ana" },
  onConnect: ({ conversationId }) => emit("connect", { conversation_id: conversationId }),
  onStatusChange: ({ status }) => emit("status", { status }),
  onMessage: (m) => {
    emit("message", { source: m.source, role: m.role, message: m.message, event_id: m.event_id });
    if (m.source === "ai") responded();
  },
  onAgentChatResponsePart: (p) => emit("part", { type: p.type, text: p.text, event_id: p.event_id }),
  onInterruption: (e) => emit("interruption", { event_id: e.event_id }),
  onAudio: (b64) => emit("audio", { bytes: Buffer.from(b64, "base64").length }),
  onPing: (e) => emit("ping", { event_id: e.event_id, ping_ms: e.ping_ms }),
  onError: (message, ctx) => emit("error", { message, ctx }),
  onDisconnect: (d) => emit("disconnect", { reason: d.reason }),
  onIncomingEvent: (e) => emit("incoming", { type: e.type }),
});
conv.sendUserMessage(text);
await gotResponse;
await sleep(1300); // long enough for a ping (the scripted graph pings every second) and for stray audio
await conv.endSession();
clearTimeout(timer);
emit("done");
