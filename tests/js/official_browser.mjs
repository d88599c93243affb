// The official @elevenlabs/client, browser build, in headless Chromium with a fake microphone: a real
// voice session against an ah server. The test page and the library are served to the browser from
// this folder by a small static server on 127.0.0.1 (a secure context, so getUserMedia works, and the
// same address space as the agent, so Chromium's local-network-access checks let the WebSocket through).
// Usage: node official_browser.mjs PORT WAV [AGENT_ID] [TIMEOUT_MS]
// Prints one JSON object: {events, incoming, console, summary}.
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { launch, sleep, waitInPage } from "./chromium.mjs";

const [port, wav, agentId = "scripted_voice", timeoutMs = "15000"] = process.argv.slice(2);
const here = dirname(fileURLToPath(import.meta.url));
const files = {
  "/official_client.html": [join(here, "official_client.html"), "text/html"],
  "/lib.iife.js": [join(here, "node_modules/@elevenlabs/client/dist/lib.iife.js"), "text/javascript"],
};

const web = createServer((req, res) => {
  const f = files[new URL(req.url, "http://x").pathname];
  if (!f) return res.writeHead(404).end();
  res.writeHead(200, { "Content-Type": f[1] }).end(readFileSync(f[0]));
});
await new Promise((r) => web.listen(0, "127.0.0.1", r));
const webPort = web.address().port;

const { context, close } = await launch(wav);
const consoleLines = [];
let result;
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`.slice(0, 300)));
  page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));
  await page.goto(`http://127.0.0.1:${webPort}/official_client.html?port=${port}&agent_id=${agentId}`);
  await page.evaluate(() => window.__start());
  // Done when an interruption has been followed by a later reply with audio of its own.
  await waitInPage(page, () => {
    if (window.__events.some((e) => e.event === "start_failed")) return true;
    const inc = window.__incoming;
    const cut = inc.find((e) => e.type === "interruption");
    if (!cut) return false;
    return inc.some((e) => e.type === "audio" && e.event_id > cut.event_id && e.t_ms > cut.t_ms + 300);
  }, null, Number(timeoutMs));
  await page.evaluate(() => window.__stop());
  await sleep(200);
  result = await page.evaluate(() => ({ events: window.__events, incoming: window.__incoming }));
} finally {
  await close();
  web.close();
}
result.console = consoleLines;
console.log(JSON.stringify(result));
