// End-to-end test of kiln's page at `/` in headless Debian Chromium (driven by playwright-core,
// no browser download). Needs a running `kiln serve` on the demo models: tests/browser/run.sh
// starts one and sets KILN_URL, KILN_KEY and SHOT_DIR.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const BASE = process.env.KILN_URL;
const KEY = process.env.KILN_KEY;
const SHOT_DIR = process.env.SHOT_DIR || tmpdir();
assert.ok(BASE && KEY, "KILN_URL and KILN_KEY must be set (tests/browser/run.sh sets them)");

// A generation on the tiny demo models takes well under a second; this bounds a stuck one.
const GENERATE_MS = 60_000;

let profile, context, page;
const offOrigin = [];

before(async () => {
  profile = mkdtempSync(join(tmpdir(), "kiln-chromium-"));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    timeout: 30_000,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(GENERATE_MS);
  page.on("request", (r) => {
    const url = r.url();
    if (!url.startsWith(BASE + "/") && !url.startsWith("data:")) offOrigin.push(url);
  });
});

after(async () => {
  await context?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

// The final image's PNG: a data URL whose bytes decode as PNG, its IHDR size and the <img>'s.
async function finalImage(index = 0) {
  const img = page.locator("#results img.final").nth(index);
  await img.waitFor({ state: "visible", timeout: GENERATE_MS });
  const info = await img.evaluate(async (el) => {
    await el.decode();
    return { src: el.src, w: el.naturalWidth, h: el.naturalHeight, seed: el.closest("figure").dataset.seed };
  });
  const prefix = "data:image/png;base64,";
  assert.ok(info.src.startsWith(prefix), info.src.slice(0, 40));
  const png = Buffer.from(info.src.slice(prefix.length), "base64");
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], "PNG signature");
  assert.equal(png.subarray(12, 16).toString("latin1"), "IHDR");
  return { ...info, pngW: png.readUInt32BE(16), pngH: png.readUInt32BE(20) };
}

async function modelOf(family) {
  const options = await page.locator("#model option").evaluateAll((os) => os.map((o) => [o.value, o.textContent]));
  const found = options.find(([, text]) => text.includes(family));
  assert.ok(found, `no ${family} model among ${JSON.stringify(options)}`);
  return found[0];
}

test("the page asks for the key, then generates with Stable Diffusion (previews, final PNG, seed)", async () => {
  const resp = await page.goto(BASE + "/");
  assert.equal(resp.status(), 200);
  assert.ok(!(await page.content()).includes(KEY), "the page must not contain the key");
  // Without the key the model list is refused, and the page says so.
  await page.locator("#error").filter({ hasText: "API key" }).waitFor();
  await page.getByLabel("Key", { exact: true }).fill(KEY);
  await page.getByLabel("Key", { exact: true }).press("Tab"); // `change`: reloads the models
  await page.locator("#model option").first().waitFor({ state: "attached" });
  await page.getByLabel("Model").selectOption(await modelOf("stable-diffusion"));
  assert.equal(await page.getByLabel("Steps").isDisabled(), false);
  await page.getByLabel("Prompt", { exact: true }).fill("a lighthouse at dusk");
  await page.getByLabel("Negative prompt").fill("blurry");
  await page.getByLabel("Size (WxH)").fill("64x64");
  await page.getByLabel("Steps").fill("2");
  await page.getByLabel("Seed").fill("7");
  await page.getByRole("button", { name: "Generate" }).click();

  const img = await finalImage();
  assert.deepEqual([img.w, img.h, img.pngW, img.pngH], [64, 64, 64, 64]);
  assert.equal(img.seed, "7");
  await page.locator("#results figcaption").filter({ hasText: "seed 7" }).waitFor();
  // Previews fall on the steps before the last: PNDM's 2 steps are 3 UNet steps, so 2 here.
  const previews = await page.locator("#previews img").count();
  assert.ok(previews >= 1, `expected a partial preview, got ${previews}`);
  assert.equal(await page.locator("#error").textContent(), "");
  // Not ticked: nothing kept in session storage.
  assert.equal(await page.evaluate(() => sessionStorage.getItem("kiln.apiKey")), null);
  await page.screenshot({ path: join(SHOT_DIR, "page-sd.png"), fullPage: true });
});

test("DALL·E: the SD-only fields are disabled and a generation completes", async () => {
  await page.getByLabel("Model").selectOption(await modelOf("dalle"));
  // Inside the disabled fieldset: not editable, and not sent.
  assert.equal(await page.getByLabel("Steps").isDisabled(), true);
  assert.equal(await page.getByLabel("Negative prompt").isDisabled(), true);
  await page.getByLabel("Seed").fill("8");
  await page.getByRole("button", { name: "Generate" }).click();
  await page.locator("#status").filter({ hasText: "Done." }).waitFor();
  const img = await finalImage();
  assert.deepEqual([img.w, img.h, img.pngW, img.pngH], [64, 64, 64, 64]);
  assert.equal(img.seed, "8");
  assert.equal(await page.locator("#error").textContent(), "");
  await page.screenshot({ path: join(SHOT_DIR, "page-dalle.png"), fullPage: true });
});

test("a wrong key shows the server's error message", async () => {
  await page.getByLabel("Key", { exact: true }).fill("not-the-key");
  await page.getByRole("button", { name: "Generate" }).click();
  await page.locator("#status").filter({ hasText: "Failed." }).waitFor();
  const error = await page.locator("#error").textContent();
  assert.match(error, /missing or wrong API key/);
  assert.equal(await page.locator("#results img").count(), 0);
  await page.screenshot({ path: join(SHOT_DIR, "page-error.png"), fullPage: true });
});

test("everything the page loaded came from the server itself", () => {
  assert.deepEqual(offOrigin, []);
});
