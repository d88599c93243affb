// The talk page (GET / of an ah server) in headless Chromium with a fake microphone: open it, press
// Start, let the looping microphone talk (and barge in), then read what the page shows.
// Usage: node talk_page.mjs PORT WAV [SCREENSHOT.png] [AGENT_ID] [TIMEOUT_MS]
// Prints one JSON object: the page's turns, badges, stats and console.
import { launch, sleep, waitInPage } from "./chromium.mjs";

const [port, wav, shot = "", agentId = "scripted_voice", timeoutMs = "15000"] = process.argv.slice(2);
const { context, close } = await launch(wav);
const consoleLines = [];
let result;
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`.slice(0, 300)));
  page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));
  await page.goto(`http://127.0.0.1:${port}/?agent_id=${agentId}&var.user_name=Ana`);
  await page.waitForFunction(() => document.querySelectorAll("#agent option").length > 0, null, { timeout: 5000 });
  const agents = await page.$$eval("#agent option", (os) => os.map((o) => o.value));
  await page.click("#start");
  // Done when a reply was interrupted and a later reply has shown its own latency.
  await waitInPage(page, () => {
    if (document.querySelector(".sys.error")) return true;
    const replies = [...document.querySelectorAll(".msg.agent")];
    const cut = replies.findIndex((r) => r.classList.contains("interrupted"));
    return cut >= 0 && replies.slice(cut + 1).some((r) => r.querySelector(".latency"));
  }, null, Number(timeoutMs));
  await sleep(300);
  if (shot) await page.screenshot({ path: shot });
  const shown = await page.evaluate(() => ({
    status: document.querySelector("#status").textContent,
    conversation_id: document.querySelector("#conv").textContent,
    items: [...document.querySelectorAll("#log > *")].map((e) => ({
      cls: e.className,
      event_id: e.dataset.eventId ? Number(e.dataset.eventId) : null,
      text: e.querySelector(".text")?.textContent ?? e.textContent,
      unheard: e.querySelector(".unheard")?.textContent ?? null,
      badges: [...e.querySelectorAll(".badge")].map((b) => b.textContent),
    })),
    stats: Object.fromEntries(["replies", "cuts", "lastlat", "medlat", "ping"].map((id) => [id, document.getElementById(id).textContent])),
  }));
  await page.click("#stop");
  await sleep(200);
  shown.after_stop = {
    status: await page.textContent("#status"),
    start_enabled: await page.isEnabled("#start"),
    last_line: await page.evaluate(() => document.querySelector("#log").lastElementChild.textContent),
  };
  result = { agents, ...shown };
} finally {
  await close();
}
result.console = consoleLines;
console.log(JSON.stringify(result));
