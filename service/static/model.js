// /models/<name>: the model's manifest in words, its report, samples, and a form scoring pasted or uploaded rows.
"use strict";

const NAME = decodeURIComponent(location.pathname.split("/").filter(Boolean)[1] || "");
const BASE = "/v1/models/" + encodeURIComponent(NAME);
let MODEL = null; // GET /v1/models/<name>

function facts(id, pairs) {
  const body = document.getElementById(id).createTBody();
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

async function renderSamples(m) {
  const holder = document.getElementById("samples");
  const image = m.image_shape;
  const answer = await api(`${BASE}/sample`, { n: image ? 32 : 8, seed: 0 });
  const rows = answer.samples;
  if (image) {
    document.getElementById("samples-help").textContent = "Decoder means of 32 draws z ~ N(0, I), one grey scale for all.";
    let lo = Infinity, hi = -Infinity;
    for (const r of rows) for (const v of r) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    const grid = el("div", null, "grid");
    for (const r of rows) grid.append(picture(r, image[0], image[1], lo, hi));
    holder.append(grid);
    return;
  }
  document.getElementById("samples-help").textContent = "Decoder means of 8 draws z ~ N(0, I), in the data's units (first 12 features).";
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

const isNumber = (s) => s !== "" && Number.isFinite(Number(s));

// Cells -> rows of the model's features; a header line is matched to feature names, other columns are ignored.
function toInputs(cells, m) {
  if (!cells.length) throw new Error("Paste at least one row.");
  let order = null, data = cells;
  if (!cells[0].every(isNumber)) {
    const header = cells[0];
    if (!m.feature_names) throw new Error("This model has no feature names: send rows of numbers without a header.");
    const missing = m.feature_names.filter((n) => !header.includes(n));
    if (missing.length) throw new Error(`The header lacks the model's feature(s): ${missing.slice(0, 10).join(", ")}${missing.length > 10 ? ", …" : ""}`);
    order = m.feature_names.map((n) => header.indexOf(n));
    data = cells.slice(1);
  }
  return data.map((cellsOfRow, i) => {
    const picked = order ? order.map((j) => cellsOfRow[j] ?? "") : cellsOfRow;
    if (picked.length !== m.input_dim) throw new Error(`Row ${i + 1} has ${picked.length} values; the model takes ${m.input_dim}.`);
    return picked.map((s, j) => {
      if (!isNumber(s)) throw new Error(`Row ${i + 1}, column ${j + 1}: ${JSON.stringify(s)} is not a number.`);
      return Number(s);
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
  const mean = m.preprocessing.mean.map((v) => Number(v.toPrecision(6)));
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
