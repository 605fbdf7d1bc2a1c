// clip-ping explore: one page, served by `clip-ping explore` or opened from a --static folder.
// Every text from the data is set with textContent, never parsed as HTML.
"use strict";

const STATIC = window.EXPLORE_DATA || null;
let META = null;

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) el.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

async function api(name, params) {
  if (STATIC) return staticApi(name, params || {});
  const response = await fetch("api/" + name + "?" + new URLSearchParams(params || {}));
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function staticApi(name, params) {
  if (name === "meta") return STATIC.meta;
  if (name === "search") {
    const found = STATIC.search[params.q];
    if (!found) throw new Error("not a caption of the set: pick one from the list");
    return found;
  }
  if (name === "image") return STATIC.image[Number(params.i)];
  if (name === "zeroshot") return STATIC.zeroshot;
  if (name === "disagreements") {
    const all = STATIC.disagreements, offset = Number(params.offset || 0);
    return { counts: all.counts, offset, rows: all.rows.slice(offset, offset + 50) };
  }
  throw new Error("unknown page " + name);
}

const imageUrl = (i) => (STATIC ? STATIC.image_files[i] : "image/" + i);
const trainUrl = (row) => (STATIC ? STATIC.train_files[row] : "train/" + row);
const fmt = (x) => (x === null || x === undefined ? "–" : Number(x).toFixed(3));
const thumb = (src, alt, cls) => h("img", { src, alt, class: cls || "thumb", loading: "lazy" });
const go = (hash) => { location.hash = hash; };

function showError(error) {
  const el = document.getElementById("error");
  el.textContent = error ? String(error.message || error) : "";
  el.hidden = !error;
}

function renderMetrics(meta) {
  // The set's own metrics under short names: the recalls computed here, then what the run's
  // results/*.json hold for this set (the same names win: they are clip-ping eval's).
  const prefix = "/" + meta.dataset + "/";
  const shown = meta.runs.map((r) => {
    const values = { ...(r.recalls || {}) };
    for (const [name, value] of Object.entries(r.metrics)) {
      values[name.includes(prefix) ? name.split(prefix)[1] : name] = value;
    }
    return values;
  });
  const names = [...new Set(shown.flatMap((v) => Object.keys(v)))].sort((a, b) =>
    a.localeCompare(b, undefined, { numeric: true }));
  const head = h("tr", {}, h("th", {}, "run (" + meta.dataset + ")"), names.map((n) => h("th", {}, n)));
  const rows = meta.runs.map((r, i) => h("tr", { "data-run": r.name }, h("td", {}, r.name),
    names.map((n) => h("td", { "data-metric": n }, fmt(shown[i][n])))));
  document.getElementById("metrics").replaceChildren(h("table", {}, head, rows));
}

function rankText(rank) {
  return rank === undefined ? "" : rank === 1 ? "correct image first" : "correct image at rank " + rank;
}

function renderSearch(result) {
  const correct = new Set(result.correct);
  return h("div", { class: "columns", id: "results" }, result.runs.map((run) =>
    h("section", { class: "run", "data-run": run.name },
      h("h3", {}, run.name),
      h("p", { class: "rank" + (run.rank === 1 ? " first" : ""), "data-rank": run.rank },
        rankText(run.rank)),
      h("ol", { class: "hits" }, run.results.map(([index, score], position) =>
        h("li", { class: correct.has(index) ? "hit correct" : "hit", "data-image": index,
                  title: correct.has(index) ? "the correct image" : "", onclick: () => go("#image=" + index) },
          thumb(imageUrl(index), "image " + index),
          h("div", {}, "#" + (position + 1) + (correct.has(index) ? " ✓" : "")),
          h("div", { class: "score" }, fmt(score))))))));
}

function searchPage(query) {
  const input = h("input", { type: "search", id: "query", value: query || "", autocomplete: "off",
    maxlength: META.max_query, placeholder: STATIC ? "filter the set's captions" : "type a query, or a caption of the set",
    list: STATIC ? null : "set-captions" });
  const matches = h("ul", { class: "matches", id: "matches" });
  const out = h("div", { id: "search-out" });
  const run = async (text) => {
    showError(null);
    if (!text.trim()) return out.replaceChildren();
    try {
      out.replaceChildren(renderSearch(await api("search", { q: text, k: 8 })));
    } catch (error) { out.replaceChildren(); showError(error); }
  };
  const filter = () => {
    const text = input.value.toLowerCase().trim();
    const unique = [...new Set(META.captions)];
    const found = text ? unique.filter((c) => c.toLowerCase().includes(text)).slice(0, 30) : [];
    matches.replaceChildren(...found.map((c) => h("li", {}, h("button", { type: "button",
      onclick: () => { input.value = c; go("#search=" + encodeURIComponent(c)); } }, c))));
    const exact = found.find((c) => c.toLowerCase() === text) || found[0];
    if (exact) run(exact); else out.replaceChildren();
  };
  let timer = null;
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(STATIC ? filter : () => run(input.value), 250);
  });
  const form = h("form", { class: "search", onsubmit: (e) => { e.preventDefault();
    go("#search=" + encodeURIComponent(input.value)); } }, input, h("button", {}, "Search"));
  const list = STATIC ? null : h("datalist", { id: "set-captions" },
    [...new Set(META.captions)].slice(0, 5000).map((c) => h("option", { value: c })));
  if (query) (STATIC ? filter : () => run(query))();
  return [form, list, matches, out];
}

function teacherSection(nearest) {
  return h("section", { class: "teacher", id: "teacher" },
    h("h3", {}, "Nearest training samples (image teacher) and the teachers' neighbours"),
    nearest.map((n) => h("div", { class: "near" },
      h("figure", {}, thumb(trainUrl(n.row), n.caption), h("figcaption", {}, n.caption, " ",
        h("span", { class: "score" }, fmt(n.similarity)))),
      h("div", {}, h("div", { class: "muted" }, "image neighbours"), h("div", { class: "near" },
        n.image_neighbours.map((m) => h("figure", {}, thumb(trainUrl(m.row), m.caption),
          h("figcaption", {}, m.caption, " ", h("span", { class: "score" }, fmt(m.similarity))))))),
      h("div", {}, h("div", { class: "muted" }, "caption neighbours"), h("ol", { class: "captions" },
        n.caption_neighbours.map((m) => h("li", {}, m.caption, " ",
          h("span", { class: "score" }, fmt(m.similarity)))))))));
}

async function imagePage(index) {
  const view = await api("image", { i: index, k: 8 });
  const hero = h("div", { class: "hero" }, h("img", { src: imageUrl(view.image), alt: "image " + view.image }),
    h("div", {}, h("h2", {}, "Image " + view.image),
      view.label !== undefined ? h("p", {}, "class: " + view.label) : null,
      h("p", { class: "muted" }, "its captions:"),
      h("ul", {}, view.captions.map((c) => h("li", {}, c)))));
  const columns = h("div", { class: "columns", id: "image-runs" }, view.runs.map((run) =>
    h("section", { class: "run", "data-run": run.name }, h("h3", {}, run.name),
      h("ol", { class: "captions" }, run.results.map(([row, text, score, correct]) =>
        h("li", { class: correct ? "correct" : "", "data-row": row }, text, " ",
          h("span", { class: "score" }, fmt(score))))))));
  return [hero, columns, view.nearest_training ? teacherSection(view.nearest_training) : null];
}

function countsTable(counts) {
  const runs = Object.keys(counts.right);
  return h("table", { id: "counts" },
    h("tr", {}, h("th", {}, "queries"), h("th", {}, "count")),
    runs.map((r) => h("tr", { "data-right": r }, h("td", {}, r + " ranks the correct image first"),
      h("td", { class: "count" }, counts.right[r]))),
    counts.pairs.map((p) => h("tr", { "data-pair": p.right + "|" + p.wrong },
      h("td", {}, p.right + " right, " + p.wrong + " wrong"), h("td", { class: "count" }, p.count))),
    h("tr", {}, h("td", {}, "all queries"), h("td", { id: "total" }, counts.total)));
}

function disagreementRows(rows) {
  return rows.map((row) => h("div", { class: "row", "data-row": row.row, onclick: () =>
      go("#search=" + encodeURIComponent(row.caption)) },
    thumb(imageUrl(row.image), "image " + row.image),
    h("div", {}, Object.entries(row.ranks).map(([name, rank]) =>
      h("span", { class: "badge" + (rank === 1 ? " first" : ""), title: name }, name + ": " + rank))),
    h("div", {}, row.caption)));
}

async function disagreementsPage() {
  const first = await api("disagreements", { offset: 0, limit: 50 });
  const list = h("div", { id: "disagreements" }, disagreementRows(first.rows));
  let offset = first.rows.length;
  const more = h("button", { onclick: async () => {
    const page = await api("disagreements", { offset, limit: 50 });
    offset += page.rows.length;
    list.append(...disagreementRows(page.rows));
    if (!page.rows.length) more.disabled = true;
  } }, "more");
  return [h("h2", {}, "Where the runs disagree"), countsTable(first.counts),
    h("p", { class: "muted" }, "Captions of the set, the ones whose correct image the runs rank most differently first (rank 1 = first)."),
    list, more];
}

async function zeroshotPage() {
  const z = await api("zeroshot");
  const order = z.classnames.map((_, c) => c).sort((a, b) => spreadOf(z, b) - spreadOf(z, a));
  const table = h("table", { id: "per-class" },
    h("tr", {}, h("th", {}, "class"), h("th", {}, "images"), z.runs.map((r) => h("th", {}, r.name))),
    order.filter((c) => z.counts[c] > 0).map((c) => h("tr", {}, h("td", {}, z.classnames[c]),
      h("td", {}, z.counts[c]), z.runs.map((r) => h("td", {}, fmt(r.accuracy[c]))))));
  const confused = h("div", { class: "columns" }, z.runs.map((r) => h("section", { class: "run" },
    h("h3", {}, r.name + ": most confused"),
    r.confused.map((p) => h("div", { class: "near" },
      h("div", {}, z.classnames[p.true] + " → " + z.classnames[p.predicted] + " (" + p.count + ")"),
      p.examples.map((i) => h("a", { href: "#image=" + i }, thumb(imageUrl(i), "image " + i))))))));
  return [h("h2", {}, "Zero-shot per class"), confused, table];
}

function spreadOf(z, c) {
  const values = z.runs.map((r) => r.accuracy[c] || 0);
  return Math.max(...values) - Math.min(...values);
}

async function route() {
  showError(null);
  try {
    const hash = decodeURIComponent(location.hash.slice(1));
    const [page, ...rest] = hash.split("=");
    const arg = rest.join("=");
    for (const link of document.querySelectorAll("nav a")) {
      link.classList.toggle("active", link.id === "nav-" + (page || "search"));
    }
    let content;
    if (page === "image") content = await imagePage(arg);
    else if (page === "disagreements") content = await disagreementsPage();
    else if (page === "zeroshot") content = await zeroshotPage();
    else content = searchPage(page === "search" ? arg : "");
    document.getElementById("view").replaceChildren(...[content].flat().filter(Boolean));
    const input = document.getElementById("query");
    if (input) input.focus();
  } catch (error) { showError(error); }
}

async function start() {
  try {
    META = await api("meta");
  } catch (error) { return showError(error); }
  document.getElementById("dataset").textContent =
    META.dataset + " · " + META.images + " images · " + META.runs.map((r) => r.name).join(" vs ");
  document.getElementById("nav-zeroshot").hidden = !META.zeroshot;
  document.getElementById("nav-disagreements").hidden = META.captions.length === 0;
  renderMetrics(META);
  window.addEventListener("hashchange", route);
  await route();
  document.body.dataset.ready = "1";
}

start();
