// lucid playground: one image and prompt, several strategies streamed side by side.
// Talks only to this server; no third-party code.
"use strict";

const $ = (id) => document.getElementById(id);
let imageUrl = null;
let model = null;
let strategies = [];

function setImage(file) {
  if (!file || !file.type.startsWith("image/")) return;
  const reader = new FileReader();
  reader.onload = () => {
    imageUrl = reader.result;
    $("preview").src = imageUrl;
    $("drop").classList.add("has-image");
  };
  reader.readAsDataURL(file);
}

// One input per parameter of the strategy's JSON schema (pydantic's model_json_schema).
function paramInput(name, spec) {
  if (!spec.type && Array.isArray(spec.anyOf)) {  // optional fields: T | null
    spec = { ...spec, ...spec.anyOf.find((s) => s.type !== "null") };
  }
  let input;
  if (spec.type === "boolean") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = Boolean(spec.default);
  } else if (Array.isArray(spec.enum)) {
    input = document.createElement("select");
    for (const v of spec.enum) input.add(new Option(String(v), String(v)));
    input.value = String(spec.default);
  } else if (spec.type === "integer" || spec.type === "number") {
    input = document.createElement("input");
    input.type = "number";
    input.step = spec.type === "integer" ? "1" : "any";
    if (spec.minimum !== undefined) input.min = spec.minimum;
    if (spec.maximum !== undefined) input.max = spec.maximum;
    input.value = spec.default ?? "";
  } else {
    input = document.createElement("input");
    input.type = "text";
    input.value = spec.default ?? "";
  }
  input.dataset.param = name;
  input.dataset.kind = spec.type || (Array.isArray(spec.enum) ? "enum" : "string");
  return input;
}

function renderStrategies() {
  const box = $("strategies");
  for (const s of strategies) {
    const fs = document.createElement("fieldset");
    fs.dataset.strategy = s.strategy;
    const legend = document.createElement("legend");
    const tick = document.createElement("input");
    tick.type = "checkbox";
    tick.name = "strategy";
    tick.value = s.strategy;
    tick.id = "tick-" + s.strategy;
    if (s.strategy === "none") {
      tick.checked = true;
      tick.disabled = true; // the plain answer is the baseline of the highlighting
    }
    fs.classList.toggle("on", tick.checked);
    tick.onchange = () => fs.classList.toggle("on", tick.checked);
    const label = document.createElement("label");
    label.htmlFor = tick.id;
    label.textContent = " " + s.strategy + (s.needs_image ? " (image)" : "");
    label.title = s.description || "";
    legend.append(tick, label);
    fs.append(legend);
    const params = document.createElement("div");
    params.className = "params";
    for (const [name, spec] of Object.entries(s.parameters.properties || {})) {
      const l = document.createElement("label");
      l.textContent = name;
      l.title = spec.description || "";
      params.append(l, paramInput(name, spec));
    }
    fs.append(params);
    box.append(fs);
  }
}

function decodingOf(fs) {
  const d = { strategy: fs.dataset.strategy };
  for (const input of fs.querySelectorAll("[data-param]")) {
    const k = input.dataset.kind;
    if (k === "boolean") d[input.dataset.param] = input.checked;
    else if (input.value === "") continue;
    else if (k === "integer") d[input.dataset.param] = parseInt(input.value, 10);
    else if (k === "number") d[input.dataset.param] = parseFloat(input.value);
    else d[input.dataset.param] = input.value;
  }
  return d;
}

// Words of `text` that are not in a longest common subsequence with `base` get <mark>.
function highlight(text, base) {
  const a = text.split(/(\s+)/);
  const b = base.split(/(\s+)/);
  const n = a.length, m = b.length;
  const L = Array.from({ length: n + 1 }, () => new Int32Array(m + 1));
  for (let i = n - 1; i >= 0; i--)
    for (let j = m - 1; j >= 0; j--)
      L[i][j] = a[i] === b[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
  const out = document.createDocumentFragment();
  let i = 0, j = 0;
  while (i < n) {
    if (j < m && a[i] === b[j]) { out.append(a[i]); i++; j++; }
    else if (j < m && L[i][j + 1] >= L[i + 1][j]) { j++; }
    else {
      if (/^\s+$/.test(a[i]) || a[i] === "") out.append(a[i]);
      else { const mk = document.createElement("mark"); mk.textContent = a[i]; out.append(mk); }
      i++;
    }
  }
  return out;
}

function card(name) {
  const c = document.createElement("article");
  c.className = "answer";
  c.dataset.strategy = name;
  c.dataset.done = "false";
  c.innerHTML = "<h2></h2><div class='text'></div><div class='stats'></div>";
  c.querySelector("h2").textContent = name;
  return c;
}

async function runOne(decoding, c) {
  const content = [{ type: "text", text: $("prompt").value }];
  if (imageUrl) content.unshift({ type: "image_url", image_url: { url: imageUrl } });
  const body = {
    model, messages: [{ role: "user", content }], temperature: 0,
    max_tokens: parseInt($("max-tokens").value, 10) || 32,
    stream: true, stream_options: { include_usage: true }, decoding,
  };
  const start = performance.now();
  let text = "", usage = null, first = null;
  const textEl = c.querySelector(".text");
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
    });
    if (!r.ok) {
      const err = await r.json().catch(() => ({}));
      throw new Error((err.error && err.error.message) || r.statusText);
    }
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      const events = buf.split("\n\n");
      buf = events.pop();
      for (const ev of events) {
        if (!ev.startsWith("data: ") || ev.startsWith("data: [DONE]")) continue;
        const obj = JSON.parse(ev.slice(6));
        if (obj.error) throw new Error(obj.error.message);
        const delta = obj.choices && obj.choices[0] && obj.choices[0].delta;
        if (delta && delta.content) {
          if (first === null) first = performance.now() - start;
          text += delta.content;
          textEl.textContent = text;
        }
        if (obj.usage) usage = obj.usage;
      }
    }
  } catch (e) {
    c.classList.add("error");
    textEl.textContent = String(e.message || e);
  }
  const secs = (performance.now() - start) / 1000;
  const cost = usage && usage.decoding;
  c.querySelector(".stats").textContent = [
    `${secs.toFixed(2)} s`,
    first !== null ? `first token ${(first / 1000).toFixed(2)} s` : null,
    usage ? `${usage.completion_tokens} tokens` : null,
    cost ? `extra ${cost.extra_tokens_total} tokens, ${cost.cost_ratio}x plain` : null,
  ].filter(Boolean).join(" · ");
  c.dataset.text = text;
  c.dataset.done = "true";
  return text;
}

async function run() {
  const picked = [...document.querySelectorAll("fieldset")].filter(
    (fs) => fs.querySelector("input[name=strategy]").checked);
  const answers = $("answers");
  answers.textContent = "";
  $("run").disabled = true;
  $("status").textContent = "running " + picked.map((f) => f.dataset.strategy).join(", ");
  const cards = picked.map((fs) => { const c = card(fs.dataset.strategy); answers.append(c); return c; });
  const texts = await Promise.all(picked.map((fs, i) => runOne(decodingOf(fs), cards[i])));
  const base = texts[picked.findIndex((fs) => fs.dataset.strategy === "none")] ?? "";
  cards.forEach((c, i) => {
    if (c.dataset.strategy !== "none" && !c.classList.contains("error")) {
      const t = c.querySelector(".text");
      t.textContent = "";
      t.append(highlight(texts[i], base));
    }
  });
  $("status").textContent = "done";
  $("run").disabled = false;
}

async function init() {
  $("image").onchange = (e) => setImage(e.target.files[0]);
  $("drop").ondragover = (e) => e.preventDefault();
  $("drop").ondrop = (e) => { e.preventDefault(); setImage(e.dataTransfer.files[0]); };
  document.onpaste = (e) => {
    const item = [...e.clipboardData.items].find((i) => i.type.startsWith("image/"));
    if (item) setImage(item.getAsFile());
  };
  $("run").onclick = run;
  const [models, strats] = await Promise.all([
    fetch("/v1/models").then((r) => r.json()),
    fetch("/v1/decoding/strategies").then((r) => r.json()),
  ]);
  model = models.data[0].id;
  $("model").textContent = model;
  strategies = strats.data;
  renderStrategies();
  document.body.dataset.ready = "true";
}

init();
