// The browser test: serves the repository on 127.0.0.1, opens the demo page in headless
// Chromium on WebGPU (SwiftShader on machines without a GPU), runs the fixture checks
// (index.html?check) and the demo on the test models (index.html?fixtures), and fails unless
// every output is within the fixture tolerances.
//   node examples/web/browser_test.mjs [--screenshot PATH]
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = normalize(join(fileURLToPath(import.meta.url), "../../.."));
const screenshot = process.argv.includes("--screenshot") ? process.argv[process.argv.indexOf("--screenshot") + 1] : null;
const types = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json" };

const server = createServer(async (req, res) => {
  const path = normalize(join(root, decodeURIComponent(new URL(req.url, "http://x").pathname)));
  if (!path.startsWith(root)) { res.writeHead(403).end(); return; }
  try {
    const body = await readFile(path);
    res.writeHead(200, { "content-type": types[extname(path)] ?? "application/octet-stream" }).end(body);
  } catch { res.writeHead(404).end(); }
});
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const base = `http://127.0.0.1:${server.address().port}/examples/web/index.html`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  // Playwright starts headless with a fresh profile; WebGPU needs the unsafe flag on Linux.
  args: ["--no-sandbox", "--enable-unsafe-webgpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
});
let ok = true;
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 1000 } });
  page.on("console", (m) => console.log(`[page] ${m.text()}`));
  const run = async (query) => {
    await page.goto(`${base}?${query}`);
    await page.waitForSelector("#result[data-done]", { state: "attached", timeout: 600_000 });
    return JSON.parse(await page.textContent("#result"));
  };

  const report = await run("check");
  console.log(`adapter: ${await page.textContent("#adapter")}`);
  for (const c of report.checks ?? []) {
    console.log(`${c.passed ? "PASS" : "FAIL"} ${c.name}: max abs ${c.max_abs.toExponential(2)} (limit ${c.limit})`);
  }
  if (!report.passed) { ok = false; console.log(`browser check failed: ${report.error ?? "see above"}`); }

  const demo = await run("fixtures");
  if (!demo.passed) { ok = false; console.log(`demo failed: ${demo.error}`); }
  else console.log(`demo: embeddings ${await page.textContent("#embed-time")}, classification ${await page.textContent("#classify-time")}`);
  if (screenshot) { await page.screenshot({ path: screenshot, fullPage: true }); console.log(`screenshot: ${screenshot}`); }
} finally {
  await browser.close();
  server.close();
}
process.exit(ok ? 0 : 1);
