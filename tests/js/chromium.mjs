// Headless Chromium (Debian's /usr/bin/chromium, not Playwright's download) with a fake microphone
// that plays (and loops) a WAV file. Shared by the browser tests.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

export const CHROMIUM = process.env.AH_CHROMIUM || "/usr/bin/chromium";

export async function launch(wav) {
  const profile = mkdtempSync(join(tmpdir(), "ah-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1100, height: 760 },
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
      `--use-file-for-fake-audio-capture=${wav}`,
      "--autoplay-policy=no-user-gesture-required",
    ],
  });
  const close = async () => {
    await context.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
  };
  return { context, close };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Poll `fn` in the page until it returns truthy or `ms` pass; returns the last value. */
export async function waitInPage(page, fn, arg, ms) {
  const end = Date.now() + ms;
  let value;
  while (Date.now() < end) {
    value = await page.evaluate(fn, arg);
    if (value) return value;
    await sleep(100);
  }
  return value;
}
