// Debian's chromium, driven by playwright-core. The network is closed:
// nothing may reach out (no updates, sync, QUIC probes or first-run pages).
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

// A fresh profile dir each run (playwright passes it as --user-data-dir).
export async function launch() {
  const profile = mkdtempSync(join(tmpdir(), "outpost-ui-profile-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 900 },
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

// A page that records console errors and uncaught exceptions.
export async function openPage(browser) {
  const page = await browser.context.newPage();
  page.errors = [];
  page.on("console", (m) => { if (m.type() === "error") page.errors.push(`console: ${m.text()}`); });
  page.on("pageerror", (e) => page.errors.push(`pageerror: ${e.message}`));
  return page;
}
