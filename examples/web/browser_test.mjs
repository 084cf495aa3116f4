// The browser test: serves the repository on 127.0.0.1, opens the demo page in headless
// Chromium on WebGPU (SwiftShader on machines without a GPU), runs the fixture checks
// (index.html?check) and the demo (index.html?fixtures), with the real all-MiniLM-L6-v2 folder
// when BACKBONE_MINILM_DIR is set (&minilm=1), and fails unless every output is within the
// fixture tolerances.
//   node examples/web/browser_test.mjs [--screenshot PATH]
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = normalize(join(fileURLToPath(import.meta.url), "../../.."));
const screenshot = process.argv.includes("--screenshot") ? process.argv[process.argv.indexOf("--screenshot") + 1] : null;
const types = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json" };

// A real all-MiniLM-L6-v2 folder (BACKBONE_MINILM_DIR, which .ci/run sets) is served at /minilm/.
const minilm = process.env.BACKBONE_MINILM_DIR ? normalize(process.env.BACKBONE_MINILM_DIR) : null;
const server = createServer(async (req, res) => {
  const url = decodeURIComponent(new URL(req.url, "http://x").pathname);
  const [base, sub] = minilm && url.startsWith("/minilm/") ? [minilm, url.slice("/minilm/".length)] : [root, url];
  const path = normalize(join(base, sub));
  if (!path.startsWith(base)) { res.writeHead(403).end(); return; }
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

  const real = minilm ? "&minilm=1" : "";
  if (!minilm) console.log("BACKBONE_MINILM_DIR not set: the text demo and check use the random test model only");
  const report = await run(`check${real}`);
  console.log(`adapter: ${await page.textContent("#adapter")}`);
  for (const c of report.checks ?? []) {
    console.log(`${c.passed ? "PASS" : "FAIL"} ${c.name}: max abs ${c.max_abs.toExponential(2)} (limit ${c.limit})`);
  }
  if (!report.passed) { ok = false; console.log(`browser check failed: ${report.error ?? "see above"}`); }

  const demo = await run(`fixtures${real}`);
  if (!demo.passed) { ok = false; console.log(`demo failed: ${demo.error}`); }
  else {
    console.log(`demo: ${await page.textContent("#bert-status")}; embeddings ${await page.textContent("#embed-time")}, classification ${await page.textContent("#classify-time")}`);
    console.log(`similarities: ${await page.textContent("#similarity")}`);
  }
  if (screenshot) { await page.screenshot({ path: screenshot, fullPage: true }); console.log(`screenshot: ${screenshot}`); }

  if (minilm) {
    // As a user does it: pick the whole all-MiniLM-L6-v2 folder (1_Pooling/config.json and
    // all) with the folder picker, then embed. The page keys files by relative path.
    await page.goto(base);
    await page.waitForFunction(() => !document.getElementById("adapter").textContent.startsWith("starting"));
    await page.setInputFiles("#bert-dir", minilm);
    await page.waitForFunction(() => /^loaded|Error/.test(document.getElementById("bert-status").textContent + document.getElementById("error").textContent), null, { timeout: 300_000 });
    const status = await page.textContent("#bert-status");
    const error = await page.textContent("#error");
    if (!status.startsWith("loaded") || error) { ok = false; console.log(`folder picker failed: ${error || status}`); }
    else {
      await page.click("#embed");
      await page.waitForSelector("#similarity table", { timeout: 300_000 });
      const cells = await page.$$eval("#similarity td", (tds) => tds.map((td) => Number(td.textContent)));
      // guitar vs instrument must be far closer than either vs the stock market.
      const [related, unrelated] = [cells[1], cells[2]];
      console.log(`folder picker: ${status}; similarity related ${related}, unrelated ${unrelated}`);
      if (!(related > 0.5 && unrelated < 0.2)) { ok = false; console.log("folder picker: similarities make no sense"); }
    }
  }
} finally {
  await browser.close();
  server.close();
}
process.exit(ok ? 0 : 1);
