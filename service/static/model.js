// /models/<name>: the model's manifest in words, its report, samples, a form scoring pasted or uploaded rows, and
// the monitoring of what the service scores (refreshed every few seconds).
"use strict";

const NAME = decodeURIComponent(location.pathname.split("/").filter(Boolean)[1] || "");
const BASE = "/v1/models/" + encodeURIComponent(NAME);
let MODEL = null; // GET /v1/models/<name>

function facts(id, pairs) {
  const table = document.getElementById(id);
  table.textContent = ""; // a refresh replaces what was there
  const body = table.createTBody();
  for (const [label, value] of pairs) body.insertRow().append(el("th", label), el("td", value ?? "–"));
}

function renderData(m) {
  const args = m.training.arguments, kinds = {};
  m.preprocessing.kinds.forEach((k) => { kinds[k] = (kinds[k] || 0) + 1; });
  const rows = m.training.rows;
  facts("data", [
    ["source", args.data ?? "in-memory table"],
    ["rows (train / validation / test)", `${rows.train} / ${rows.validation} / ${rows.test}`],
    ["features", `${m.input_dim}` + (m.image_shape ? ` (images ${m.image_shape.join("×")})` : "")],
    ["label column", args.label_column ?? "none"],
  ]);
  facts("features", [
    ["continuous features", kinds.continuous || 0],
    ["on a lattice (integer-like)", (kinds.lattice || 0) + (m.preprocessing.dequantize ? ", trained dequantised" : "")],
    ["constant (not modelled)", kinds.constant || 0],
    ["near-constant (≥ 99% one value)", m.preprocessing.near_constant.length],
    ["scaling", "per-feature mean and standard deviation, inside every graph"],
  ]);
}

function renderTraining(m, detail) {
  const t = m.training, a = t.arguments;
  facts("training", [
    ["model", `latent ${m.latent_dim}, ${m.covariance} covariance, hidden ${JSON.stringify(a.hidden ?? "?")}`],
    ["objective", `${a.objective ?? "elbo"}, KL warm-up ${a.warmup_epochs ?? "?"} epochs, lr ${a.lr ?? "?"}`],
    ["prior", priorWords(m.prior)],
    ["epochs", `${t.epochs_run} run, best ${t.best_epoch}`],
    ["stopped", t.stop_reason],
    ["time", `${fmt(t.seconds, 1)} s`],
    ["seed", t.seed],
  ]);
  facts("export", [
    ["created", new Date(m.created_at).toLocaleString()],
    ["ONNX parity with torch", `${m.parity.passed ? "passed" : "FAILED"}, max |diff| ${fmt(m.parity.max_abs_diff)}`],
    ["runs on", detail.provider],
    ["libraries", Object.entries(t.library_versions).map(([k, v]) => `${k} ${v}`).join(", ")],
  ]);
}

const DIAGNOSTICS = [
  ["rows evaluated", (d) => d.rows],
  ["ELBO", (d) => fmt(d.elbo)],
  ["reconstruction", (d) => fmt(d.reconstruction)],
  ["KL", (d) => fmt(d.kl)],
  ["IWAE (log-likelihood bound)", (d) => `${fmt(d.iwae)} (K=${d.iwae_samples})`],
  ["gap IWAE − ELBO", (d) => fmt(d.gap)],
  ["active latent units", (d) => `${d.active_units} of ${d.kl_per_dim.length}`],
  ["aggregate-posterior KL", (d) => fmt(d.aggregate_posterior_kl)],
  ["decoder / data variance", (d) => `${fmt(d.decoder_variance_mean)} / ${fmt(d.data_variance_mean)}`],
  ["dequantised IWAE", (d) => fmt(d.dequantized_iwae)],
  ["bits per dimension", (d) => fmt(d.bits_per_dim)],
  ["AUROC (labels)", (d) => fmt(d.labelled?.auroc)],
  ["average precision (labels)", (d) => fmt(d.labelled?.average_precision)],
];

function renderDiagnostics(m) {
  const splits = Object.keys(m.diagnostics);
  const table = document.getElementById("diagnostics");
  const head = table.createTHead().insertRow();
  head.append(el("th", ""), ...splits.map((s) => el("th", s, "num")));
  const body = table.createTBody();
  for (const [label, get] of DIAGNOSTICS) {
    const values = splits.map((s) => get(m.diagnostics[s]));
    if (values.every((v) => v === "–")) continue;
    row(body, [label, ...values], splits.map((_, i) => i + 1));
  }
  // worded once at training and stored in the manifest (validation, the split the model is judged on); a bundle
  // written before warnings were stored has none
  for (const w of m.diagnostics.validation?.warnings ?? []) {
    document.getElementById("warnings").append(el("div", w.message, "warn"));
  }
}

function renderAnomaly(m) {
  const a = m.anomaly;
  facts("anomaly", [
    ["threshold (anomaly score above it is flagged)", fmt(a.threshold)],
    ["at the validation quantile", a.default_quantile],
    ["importance samples K", a.importance_samples],
    ["validation rows behind it", a.rows],
    ["median validation score", fmt(a.quantiles["0.5"] ?? a.sample[Math.floor(a.sample.length / 2)])],
  ]);
  for (const w of a.warnings) document.getElementById("warnings").append(el("div", w, "warn"));
}

async function renderReport(detail) {
  const holder = document.getElementById("report");
  if (detail.report.includes("index.html")) {
    const link = el("a", "the report as one page");
    link.href = `${BASE}/report/index.html`;
    document.getElementById("report-link").append("Also: ", link, " (opens without an API key only when none is required).");
  }
  for (const file of detail.report.filter((f) => f.endsWith(".png"))) {
    const figure = el("figure");
    const img = el("img");
    img.alt = file;
    figure.append(el("figcaption", file.replace(/\.png$/, "").replaceAll("_", " ")), img);
    holder.append(figure);
    blobUrl(`${BASE}/report/${encodeURIComponent(file)}`).then((url) => { img.src = url; }, (err) => showError(figure, err));
  }
  if (!detail.report.length) holder.append(el("p", "This bundle has no report.", "muted"));
}

// the manifest's prior in words: N(0, I), or the fitted mixture and what it gained on validation rows
function priorWords(prior) {
  if (!prior) return "N(0, I)";
  const k = prior.weights.length, sel = prior.selection || {}, key = String(prior.fitted_as ?? k);
  const gain = sel["0"] !== undefined && sel[key] !== undefined ? `, validation ELBO +${fmt(sel[key] - sel["0"], 2)} nats over N(0, I)` : "";
  return `Gaussian mixture of ${k} component${k === 1 ? "" : "s"} fitted to the aggregate posterior${gain}`;
}

async function renderSamples(m) {
  const holder = document.getElementById("samples");
  const image = m.image_shape;
  const answer = await api(`${BASE}/sample`, { n: image ? 32 : 8, seed: 0 });
  const rows = answer.samples;
  if (image) {
    document.getElementById("samples-help").textContent = `Decoder means of 32 draws z from the prior (${m.prior ? "the fitted mixture" : "N(0, I)"}), one grey scale for all.`;
    let lo = Infinity, hi = -Infinity;
    for (const r of rows) for (const v of r) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    const grid = el("div", null, "grid");
    for (const r of rows) grid.append(picture(r, image[0], image[1], lo, hi));
    holder.append(grid);
    return;
  }
  document.getElementById("samples-help").textContent = `Decoder means of 8 draws z from the prior (${m.prior ? "the fitted mixture" : "N(0, I)"}), in the data's units (first 12 features).`;
  const names = m.feature_names || [...Array(m.input_dim).keys()].map((j) => `x${j}`);
  const shown = names.slice(0, 12);
  const table = el("table");
  table.createTHead().insertRow().append(...shown.map((n) => el("th", n, "num")));
  const body = table.createTBody();
  for (const r of rows) row(body, shown.map((_, j) => fmt(r[j])), shown.map((_, j) => j));
  const scroll = el("div", null, "scroll");
  scroll.append(table);
  holder.append(scroll);
}

const MONITOR_EVERY_MS = 5000;
const SVG_NS = "http://www.w3.org/2000/svg";
// the p-value histogram's drawing area, in viewBox units; a density above `cap` is drawn cut off, its value on top
const HIST = { width: 640, height: 230, left: 40, right: 56, top: 16, bottom: 36, cap: 10 };

const percent = (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(2)}%`);

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

// GET /v1/models/<name>/monitoring every few seconds, while the section is in the document; a failed look shows
// its error and the next one tries again.
function watchMonitoring() {
  const section = document.getElementById("monitoring");
  let busy = false;
  const look = async () => {
    if (busy) return; // a slow answer: skip a beat rather than pile requests up
    busy = true;
    try {
      await refreshMonitoring(section);
    } finally {
      busy = false;
    }
  };
  const timer = setInterval(() => {
    if (!section.isConnected) clearInterval(timer);
    else look();
  }, MONITOR_EVERY_MS);
  look();
}

async function refreshMonitoring(section) {
  const status = document.getElementById("monitoring-status");
  try {
    const mon = await api(`${BASE}/monitoring`);
    status.textContent = "";
    renderMonitoring(mon);
  } catch (err) {
    showError(status, err);
    return;
  }
  section.dataset.refreshes = String(Number(section.dataset.refreshes || 0) + 1); // for tests: answers shown
  document.getElementById("monitoring-updated").textContent = new Date().toLocaleTimeString();
}

function renderMonitoring(mon) {
  const body = document.getElementById("monitoring-body");
  const section = document.getElementById("monitoring");
  if (!mon.enabled) {
    body.hidden = true;
    delete section.dataset.windowRows;
    document.getElementById("monitoring-status").append(
      el("p", `${mon.summary ?? "monitoring is off (VAE_MONITOR=false)"}: what this service scores is not watched.`, "muted"));
    return;
  }
  body.hidden = false;
  section.dataset.windowRows = String(mon.window.rows);
  renderAlarm(mon);
  document.getElementById("monitoring-summary").textContent = mon.summary;
  const w = mon.window, r = mon.reference, t = mon.totals, f = mon.flagged, d = mon.drift;
  facts("monitoring-window", [
    ["window", `${w.rows} rows over the last ${fmt(w.seconds, 1)} s`],
    ["window at most", `the newest ${w.limit_rows} rows of the last ${fmt(w.limit_seconds, 0)} s`],
    ["judged from", `${w.min_rows} rows (fewer: the window is filling, no alarm)`],
    ["scored since start", `${t.scored_rows} rows, ${t.flagged_rows} flagged`],
    ["model version", mon.version + (mon.workers > 1 ? ` (tallies of ${mon.workers} workers)` : "")],
  ]);
  facts("monitoring-tests", [
    ["flagged in the window", `${f.rows} (${percent(f.share)}), expected ${percent(f.expected)}, p = ${fmt(f.p_value, 3)}`],
    ["threshold", `${fmt(r.threshold)}, validation quantile ${r.default_quantile} of ${r.sample_rows} rows (K = ${r.importance_samples})`],
    ["drift test", d.test],
    ["result", `statistic ${fmt(d.statistic)} on ${d.dof} degrees of freedom, p = ${fmt(d.p_value, 3)}`],
    ["alarm when p below", d.level],
  ]);
  drawHistogram(mon.p_values);
  pValueFloor(mon.p_values.upper_edges, r.sample_rows);
  renderDriftedFeatures(mon.features);
}

function renderAlarm(mon) {
  const [text, state] = mon.window.filling ? ["window filling", "filling"] : mon.drift.alarm ? ["alarm", "on"] : ["no alarm", "off"];
  const node = document.getElementById("drift-alarm");
  node.textContent = text;
  node.className = `drift-alarm alarm-${state}`;
}

// Bars of density (count / rows / bucket width), one equal-width slot per bucket, against the uniform density 1.
function drawHistogram(p) {
  const plot = document.getElementById("pvalue-histogram");
  const edges = p.upper_edges, counts = p.counts;
  const total = counts.reduce((a, b) => a + b, 0);
  const lower = (i) => (i ? edges[i - 1] : 0);
  const density = counts.map((c, i) => (total ? c / total / (edges[i] - lower(i)) : 0));
  const top = Math.min(HIST.cap, Math.max(2, Math.ceil(Math.max(...density))));
  const h = HIST.height - HIST.top - HIST.bottom, slot = (HIST.width - HIST.left - HIST.right) / edges.length;
  const y = (d) => HIST.top + h * (1 - Math.min(d, top) / top);
  const right = HIST.width - HIST.right, base = HIST.top + h;
  const nodes = [];
  for (const tick of [0, 1, top]) {
    nodes.push(svg("line", { x1: HIST.left, x2: right, y1: y(tick), y2: y(tick), class: "gridline" }));
    nodes.push(svg("text", { x: HIST.left - 6, y: y(tick) + 3.5, "text-anchor": "end" }, tick));
  }
  if (!total) nodes.push(svg("text", { x: (HIST.left + right) / 2, y: HIST.top + h / 2, "text-anchor": "middle" }, "no rows in the window yet"));
  density.forEach((d, i) => {
    const x = HIST.left + i * slot;
    if (total) {
      const bar = svg("rect", { x: x + 2, y: y(d), width: slot - 4, height: base - y(d), class: d > top ? "bar cut" : "bar" });
      bar.append(svg("title", {}, `p in (${lower(i)}, ${edges[i]}]: ${counts[i]} of ${total} rows, density ${fmt(d, 2)}`));
      nodes.push(bar);
      if (d > top) nodes.push(svg("text", { x: x + slot / 2, y: HIST.top - 4, "text-anchor": "middle" }, fmt(d, 0)));
    }
    nodes.push(svg("text", { x: x + slot / 2, y: base + 13, "text-anchor": "middle" }, edges[i]));
  });
  nodes.push(svg("line", { x1: HIST.left, x2: right, y1: y(1), y2: y(1), class: "uniform" }));
  nodes.push(svg("text", { x: right + 4, y: y(1) + 3.5, class: "uniform-label" }, "uniform"));
  nodes.push(svg("line", { x1: HIST.left, x2: right, y1: base, y2: base, class: "axis" }));
  nodes.push(svg("text", { x: (HIST.left + right) / 2, y: HIST.height - 4, "text-anchor": "middle" }, "p-value bucket (upper edge)"));
  nodes.push(svg("text", { x: 4, y: HIST.top - 4 }, "density"));
  plot.replaceChildren(...nodes);
}

// A reference of n rows gives p-values k / (n + 1): none below 1 / (n + 1), so the buckets under it stay empty.
function pValueFloor(edges, n) {
  const floor = 1 / (n + 1);
  const empty = edges.filter((e) => e < floor);
  document.getElementById("pvalue-floor").textContent = empty.length
    ? `With a reference of ${n} validation scores no p-value is below 1/${n + 1} = ${fmt(floor, 4)}: the bucket(s) up to ${empty.at(-1)} stay empty, whatever is scored.`
    : "";
}

function renderDriftedFeatures(f) {
  const table = document.getElementById("drifted-features");
  const note = document.getElementById("features-note");
  const body = table.tBodies[0];
  body.textContent = "";
  table.hidden = !f.available || !f.top.length;
  if (!f.available) {
    note.textContent = f.note ?? "This bundle has no per-feature validation reference: retrain it to see which features moved.";
    return;
  }
  if (!f.top.length) {
    note.textContent = "No rows in the window yet.";
    return;
  }
  const moved = new Set(f.moved);
  note.textContent = `The ${f.top.length} features whose mean NLL per row moved most from the validation rows', ` +
    `in standard errors (z); a feature moved when |z| > ${fmt(f.cut, 2)} (Bonferroni over the features). ` +
    (moved.size ? `Moved: ${moved.size}.` : "None moved.");
  for (const t of f.top) {
    const tr = row(body, [t.feature, fmt(t.z, 2), fmt(t.window_mean), fmt(t.reference_mean), moved.has(t.feature) ? el("span", "moved", "flag") : ""], [1, 2, 3]);
    if (moved.has(t.feature)) tr.classList.add("moved");
  }
}

function picture(values, h, w, lo, hi) {
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  const span = hi > lo ? hi - lo : 1;
  values.forEach((v, i) => {
    const g = 255 - Math.round(255 * Math.min(1, Math.max(0, (v - lo) / span))); // dark = high, as in the report
    img.data.set([g, g, g, 255], 4 * i);
  });
  ctx.putImageData(img, 0, 0);
  return canvas;
}

// CSV text -> cells per line: commas (or tabs / semicolons when a line has no comma), double quotes honoured.
function parseCsv(text) {
  const lines = text.split(/\r?\n/).filter((l) => l.trim() !== "");
  if (!lines.length) return [];
  const first = lines[0];
  const sep = first.includes(",") ? "," : first.includes("\t") ? "\t" : first.includes(";") ? ";" : ",";
  return lines.map((line) => {
    const cells = [];
    let cell = "", quoted = false;
    for (let i = 0; i < line.length; i++) {
      const c = line[i];
      if (quoted) {
        if (c === '"' && line[i + 1] === '"') { cell += '"'; i++; } else if (c === '"') quoted = false; else cell += c;
      } else if (c === '"') quoted = true;
      else if (c === sep) { cells.push(cell.trim()); cell = ""; } else cell += c;
    }
    cells.push(cell.trim());
    return cells;
  });
}

// A number as Python's float() reads one, as vae-score does (decimal, `_` between digits, inf, infinity, nan in any
// case; not JavaScript's 0x10 or 0b1), in any script's decimal digits (float() reads ٣ or ３ as 3); toNumber gives its
// value.
const FLOAT = /^[+-]?(?:(?:\d(?:_?\d)*(?:\.(?:\d(?:_?\d)*)?)?|\.\d(?:_?\d)*)(?:[eE][+-]?\d(?:_?\d)*)?|inf(?:inity)?|nan)$/i;
const DIGIT = /\p{Nd}/u;
// Unicode gives each script its ten digits as consecutive code points from its zero (a stability policy), so a digit's
// value is its distance from the start of its run of digits, modulo 10 (some runs hold several sets of ten)
function asciiDigit(c) {
  const cp = c.codePointAt(0);
  let start = cp;
  while (DIGIT.test(String.fromCodePoint(start - 1))) start--;
  return String((cp - start) % 10);
}
const asciiDigits = (s) => s.replace(/[^\x00-\x7f]/gu, (c) => (DIGIT.test(c) ? asciiDigit(c) : c));
const isNumber = (s) => FLOAT.test(asciiDigits(s));
const toNumber = (s) => Number(asciiDigits(s).replace(/_/g, "").replace(/inf(inity)?$/i, "Infinity"));

// A first line is the header as vae-score decides it for a file (vae_tables/text.py text_layout), so that a paste and
// a file of the same text score the same rows: when it is not a row of numbers (missing values allowed); when it is
// exactly the model's feature names, three at least, and the next line is not (a model trained on a file pandas
// wrote from unnamed columns has features named 0, 1, 2, ...; a row 1,0 of a model with features 0 and 1 is a row);
// or when it is whole numbers counting up by one, three at least, and a next line does not (the header pandas'
// to_csv gives unnamed columns; unlike a file, a paste of that one line is a row: a paste of a header alone is never
// meant). Header cells are matched to the model's feature names; other columns are ignored.
const NA_TOKENS = new Set(["", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"]); // vae_tables/numeric.py
const isDataRow = (line) => line.every((c) => NA_TOKENS.has(c) || isNumber(c)) && line.some(isNumber);
const afterIndex = (line) => (line[0] === "" ? line.slice(1) : line); // past pandas' unnamed index column

function namesEvery(line, names) {
  if (!names || !names.every((n) => line.includes(n))) return false;
  if (!isDataRow(line)) return true;
  const named = afterIndex(line), distinct = new Set(names);
  return distinct.size >= 3 && named.length === distinct.size && new Set(named).size === named.length;
}

function countsUp(line) {
  const cells = afterIndex(line);
  if (cells.length < 3 || !cells.every((c) => /^[0-9]+$/.test(c))) return false;
  return cells.every((c, i) => BigInt(c) === BigInt(cells[0]) + BigInt(i));
}

function hasHeader(cells, names) {
  const [first, second] = cells;
  const named = namesEvery(first, names) && !(second && namesEvery(second, names));
  return named || !isDataRow(first) || (countsUp(first) && second !== undefined && !countsUp(second));
}

function toInputs(cells, m) {
  if (!cells.length) throw new Error("Paste at least one row.");
  let order = null, data = cells;
  if (hasHeader(cells, m.feature_names)) {
    const header = cells[0];
    // a first line of numbers is a header only by counting up (names that were numbers match and do not land here)
    const why = isDataRow(header)
      ? `The first line (${header.slice(0, 3).join(", ")}, …) is read as a header, as vae-score reads a file: whole numbers counting up by one are the names pandas gives unnamed columns. `
      : "";
    if (!m.feature_names) throw new Error(`${why}This model has no feature names: send rows of numbers without a header.`);
    const missing = m.feature_names.filter((n) => !header.includes(n));
    if (missing.length) throw new Error(`${why}The header lacks the model's feature(s): ${missing.slice(0, 10).join(", ")}${missing.length > 10 ? ", …" : ""}`);
    order = m.feature_names.map((n) => header.indexOf(n));
    data = cells.slice(1);
  }
  return data.map((cellsOfRow, i) => {
    const picked = order ? order.map((j) => cellsOfRow[j] ?? "") : cellsOfRow;
    if (picked.length !== m.input_dim) throw new Error(`Row ${i + 1} has ${picked.length} values; the model takes ${m.input_dim}.`);
    return picked.map((s, j) => {
      const value = isNumber(s) ? toNumber(s) : NaN;
      if (!Number.isFinite(value)) throw new Error(`Row ${i + 1}, column ${j + 1}: ${JSON.stringify(s)} is not a finite number.`);
      return value;
    });
  });
}

async function score() {
  const errorBox = document.getElementById("score-error");
  const table = document.getElementById("scores");
  const body = table.tBodies[0];
  errorBox.textContent = "";
  body.textContent = "";
  table.hidden = true;
  try {
    const m = MODEL.manifest;
    const inputs = toInputs(parseCsv(document.getElementById("rows").value), m);
    const answer = await api(`${BASE}/score`, { inputs, explain: true });
    const names = m.feature_names || [...Array(m.input_dim).keys()].map((j) => `x${j}`);
    answer.anomaly_score.forEach((s, i) => {
      const nll = answer.feature_nll[i];
      const top = [...nll.keys()].sort((a, b) => nll[b] - nll[a]).slice(0, 3);
      const tr = row(body, [
        i + 1,
        fmt(s),
        fmt(answer.percentile[i], 2),
        fmt(answer.p_value[i], 4),
        answer.is_anomaly[i] ? el("span", "anomaly", "flag") : "normal",
        top.map((j) => `${names[j]} ${fmt(nll[j], 1)}`).join(", "),
      ], [0, 1, 2, 3]);
      tr.dataset.score = String(s); // the exact number the service sent
    });
    table.hidden = false;
  } catch (err) {
    showError(errorBox, err);
  }
}

function exampleRow() {
  const m = MODEL.manifest;
  const names = m.feature_names || [...Array(m.input_dim).keys()].map((j) => `x${j}`);
  // the training rows' mean: trained dequantised, a lattice feature's stored mean is that of x + h u (+ h/2)
  const pre = m.preprocessing;
  const mean = pre.mean.map((v, j) => Number((pre.dequantize ? v - pre.step[j] / 2 : v).toPrecision(6)));
  document.getElementById("rows").value = `${names.join(",")}\n${mean.join(",")}`;
}

async function main() {
  document.title = `${NAME} – Gaussian VAE service`;
  document.getElementById("title").textContent = NAME;
  const status = document.getElementById("status");
  try {
    MODEL = await api(BASE);
  } catch (err) {
    showError(status, err);
    return;
  }
  const m = MODEL.manifest;
  document.getElementById("title").textContent = `${m.name} · version ${m.version}`;
  status.textContent = `Trained ${new Date(m.created_at).toLocaleDateString()} on ${m.training.rows.train} rows; ${m.input_dim} features → ${m.latent_dim} latent dimensions.`;
  renderData(m);
  renderTraining(m, MODEL);
  renderDiagnostics(m);
  renderAnomaly(m);
  watchMonitoring();
  document.getElementById("score").addEventListener("click", score);
  document.getElementById("example").addEventListener("click", exampleRow);
  document.getElementById("file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (file) document.getElementById("rows").value = await file.text();
  });
  renderReport(MODEL);
  renderSamples(m).catch((err) => showError(document.getElementById("samples"), err));
  document.body.dataset.ready = "true"; // for tests and scripts: the page has its model
}

main();
