// The demo page's glue: file pickers and buttons call the wasm engine. With ?fixtures it loads
// the repository's small test models and runs both demos (for screenshots); with ?check it runs
// the browser test (every fixture output against its golden file) and writes the report to #result.
// With &minilm=1 (the test server serves a real all-MiniLM-L6-v2 folder at /minilm/) both use
// that model for text: the demo shows real similarities and the check compares its embeddings
// with sentence-transformers'.
import init, { Engine } from "./pkg/backbone_web.js";

const $ = (id) => document.getElementById(id);
const FIXTURES = "../../tests/fixtures";
let engine;

function fail(e) {
  $("error").textContent = String(e && e.stack ? e.stack : e);
  $("result").textContent = JSON.stringify({ passed: false, error: String(e) });
  $("result").dataset.done = "1";
}

async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}
const fetchText = async (url) => new TextDecoder().decode(await fetchBytes(url));

// Files of a picked folder by path relative to it (webkitRelativePath less the folder's own
// name), so that 1_Pooling/config.json never replaces the model's config.json.
function folder(input) {
  const files = {};
  for (const f of input.files) {
    const rel = f.webkitRelativePath ? f.webkitRelativePath.split("/").slice(1).join("/") : f.name;
    files[rel || f.name] = f;
  }
  return files;
}
async function loadText(files) {
  const paths = Object.keys(files);
  const blobs = await Promise.all(paths.map(async (p) => files[p] instanceof Uint8Array ? files[p] : new Uint8Array(await files[p].arrayBuffer())));
  return engine.load_text(paths, blobs);
}
// A text model folder served over HTTP: the files a Hugging Face or sentence-transformers
// folder may hold (absent ones skipped).
const TEXT_FILES = ["config.json", "model.safetensors", "tokenizer.json", "modules.json", "1_Pooling/config.json",
  "sentence_bert_config.json", "config_sentence_transformers.json", "tokenizer_config.json"];
async function fetchFolder(url) {
  const files = {};
  for (const name of TEXT_FILES) {
    const r = await fetch(`${url}/${name}`);
    if (r.ok) files[name] = new Uint8Array(await r.arrayBuffer());
  }
  return files;
}
// The adapter as the browser names it (GPUAdapter.info), for the page.
async function browserAdapterName() {
  try {
    const a = await navigator.gpu.requestAdapter();
    const i = a.info ?? {};
    const name = [i.vendor, i.architecture, i.device, i.description].filter((x) => x).join(" ");
    return name + (i.isFallbackAdapter ? " (fallback adapter)" : "");
  } catch { return ""; }
}
async function need(files, name) {
  if (!files[name]) throw new Error(`the folder has no ${name}`);
  return new Uint8Array(await files[name].arrayBuffer());
}

function cosine(a, b) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
  return dot / Math.sqrt(na * nb);
}

async function embed() {
  const texts = $("sentences").value.split("\n").map((s) => s.trim()).filter((s) => s);
  const start = performance.now();
  const flat = await engine.embed(texts);
  $("embed-time").textContent = `${(performance.now() - start).toFixed(1)} ms for ${texts.length} sentences`;
  const dim = flat.length / texts.length;
  const rows = texts.map((_, i) => flat.subarray(i * dim, (i + 1) * dim));
  let html = "<table><tr><th></th>" + texts.map((_, j) => `<th>${j + 1}</th>`).join("") + "</tr>";
  texts.forEach((t, i) => {
    html += `<tr><th title="${t.replace(/"/g, "&quot;")}">${i + 1}. ${t.slice(0, 40)}</th>`;
    html += rows.map((r) => `<td>${cosine(rows[i], r).toFixed(3)}</td>`).join("") + "</tr>";
  });
  $("similarity").innerHTML = html + "</table>";
}

async function classify(bytes) {
  const start = performance.now();
  const top = JSON.parse(await engine.classify(bytes));
  $("classify-time").textContent = `${(performance.now() - start).toFixed(1)} ms`;
  $("classes").innerHTML = "<table><tr><th>class</th><th>label</th><th>probability</th></tr>" +
    top.map((c) => `<tr><td>${c.class}</td><td>${c.label}</td><td>${(100 * c.prob).toFixed(2)}%</td></tr>`).join("") + "</table>";
}

// A synthetic test image (the fixtures ship no photos): a colour gradient as PNG bytes.
async function gradientPng(w, h) {
  const canvas = new OffscreenCanvas(w, h);
  const g = canvas.getContext("2d");
  const grad = g.createLinearGradient(0, 0, w, h);
  grad.addColorStop(0, "#1e88e5"); grad.addColorStop(0.5, "#fdd835"); grad.addColorStop(1, "#e53935");
  g.fillStyle = grad; g.fillRect(0, 0, w, h);
  return new Uint8Array(await (await canvas.convertToBlob({ type: "image/png" })).arrayBuffer());
}

const MINILM = "/minilm";
const useMinilm = new URLSearchParams(location.search).has("minilm");

async function loadFixtures() {
  const bert = `${FIXTURES}/bert-micro-12l-random`, cswin = `${FIXTURES}/cswin-micro-s3full`;
  if (useMinilm) {
    const about = await loadText(await fetchFolder(MINILM));
    $("bert-status").textContent = `loaded all-MiniLM-L6-v2: ${about}`;
  } else {
    const about = await loadText(await fetchFolder(bert));
    $("bert-status").textContent = `loaded bert-micro-12l-random (test fixture, random weights): ${about}`;
  }
  await engine.load_cswin(await fetchText(`${cswin}/config.json`), await fetchBytes(`${cswin}/model.safetensors`));
  $("cswin-status").textContent = "loaded cswin-micro-s3full (test fixture, random weights)";
}

async function check() {
  const bert = `${FIXTURES}/bert-micro-12l-random`, cswin = `${FIXTURES}/cswin-micro-s3full`;
  const report = await engine.check_fixtures(
    await fetchText(`${bert}/config.json`), await fetchBytes(`${bert}/model.safetensors`), await fetchBytes(`${bert}/io.safetensors`),
    await fetchText(`${cswin}/config.json`), await fetchBytes(`${cswin}/model.safetensors`), await fetchBytes(`${cswin}/golden.safetensors`));
  let merged = JSON.parse(report);
  if (useMinilm) {
    // The real model on the golden file's short sentences (the sixth fills 256 tokens).
    const golden = `${FIXTURES}/all-minilm-l6-v2`;
    const texts = JSON.parse(await fetchText(`${golden}/sentences.json`)).sentences.slice(0, 5);
    await loadText(await fetchFolder(MINILM));
    const real = JSON.parse(await engine.check_text_embeddings("all-MiniLM-L6-v2", texts, [0, 1, 2, 3, 4],
      await fetchBytes(`${golden}/golden.safetensors`)));
    merged = { passed: merged.passed && real.passed, checks: [...merged.checks, ...real.checks] };
  }
  $("result").textContent = JSON.stringify(merged);
  $("result").hidden = false;
  $("result").dataset.done = "1";
}

async function main() {
  await init();
  engine = await Engine.create();
  $("adapter").textContent = engine.adapter(await browserAdapterName());
  $("bert-dir").onchange = async () => {
    try {
      $("bert-status").textContent = `loaded ${await loadText(folder($("bert-dir")))}`;
    } catch (e) { fail(e); }
  };
  $("cswin-dir").onchange = async () => {
    try {
      const f = folder($("cswin-dir"));
      await engine.load_cswin(new TextDecoder().decode(await need(f, "config.json")), await need(f, "model.safetensors"));
      $("cswin-status").textContent = "loaded";
    } catch (e) { fail(e); }
  };
  $("embed").onclick = () => embed().catch(fail);
  $("classify").onclick = async () => {
    try {
      const file = $("image").files[0];
      if (!file) throw new Error("pick an image first");
      await classify(new Uint8Array(await file.arrayBuffer()));
    } catch (e) { fail(e); }
  };
  const params = new URLSearchParams(location.search);
  if (params.has("check")) await check();
  if (params.has("fixtures")) {
    await loadFixtures();
    await embed();
    await classify(await gradientPng(160, 120));
    $("result").textContent = JSON.stringify({ passed: true, demo: "done" });
    $("result").dataset.done = "1";
  }
}

main().catch(fail);
