// Similarity explorer (mame_transfer.explore). Data arrive as script files calling MAMEX.put(key, value), so the
// page works from file:// as well as over HTTP. Every piece of metadata is inserted with textContent / Option /
// setAttribute, never as HTML.
(function () {
  "use strict";

  const t0 = performance.now();
  const loaded = new Map();
  const pending = new Map();
  window.MAMEX = {
    put(key, value) {
      loaded.set(key, value);
      const p = pending.get(key);
      if (p) { pending.delete(key); p.resolve(value); }
    },
    timing: {},
  };

  function load(key) {
    if (loaded.has(key)) return Promise.resolve(loaded.get(key));
    if (pending.has(key)) return pending.get(key).promise;
    const entry = {};
    entry.promise = new Promise((resolve, reject) => { entry.resolve = resolve; entry.reject = reject; });
    pending.set(key, entry);
    const s = document.createElement("script");
    s.src = "data/" + key + ".js";
    s.async = true;
    s.onerror = () => { pending.delete(key); entry.reject(new Error("cannot load data/" + key + ".js")); };
    document.head.appendChild(s);
    return entry.promise;
  }

  function bytes(b64) {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  }

  const $ = (id) => document.getElementById(id);
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function status(msg) { $("status").textContent = msg; }
  function fail(err) { status("error: " + err.message); throw err; }

  let META = null, ITEMS = null, THUMB = null;
  const PAGE = 60;
  const state = { filtered: [], page: 0, current: null, pinned: null, pinnedSims: null };

  // ------------------------------------------------------------------------------------------- items, thumbs

  function pad(n, w) { return String(n).padStart(w, "0"); }
  function thumbSrc(i) { return "thumbs/" + pad(Math.floor(i / META.thumbs_per_dir), 3) + "/" + i + ".jpg"; }

  function picture(i) {
    const box = el("div", "img");
    if (THUMB[i]) {
      const img = document.createElement("img");
      img.loading = "lazy";
      img.alt = ITEMS.name[i];
      img.src = thumbSrc(i);
      box.appendChild(img);
    } else {
      box.appendChild(el("div", "placeholder", "no image\n" + META.classes[ITEMS.label[i]]));
    }
    return box;
  }

  function card(i, extra) {
    const f = el("figure", "thumb");
    f.tabIndex = 0;
    f.dataset.id = String(i);
    f.title = ITEMS.name[i] + " — " + META.classes[ITEMS.label[i]];
    f.appendChild(picture(i));
    const cap = el("figcaption");
    if (extra && extra.score !== undefined) cap.appendChild(el("span", "score", extra.score.toFixed(3) + " "));
    cap.appendChild(el("span", "label", META.classes[ITEMS.label[i]]));
    f.appendChild(cap);
    if (extra && extra.cls) f.classList.add(extra.cls);
    if (state.current === i) f.classList.add("current");
    f.addEventListener("click", () => show(i));
    f.addEventListener("keydown", (ev) => { if (ev.key === "Enter") show(i); });
    return f;
  }

  // ------------------------------------------------------------------------------------------- browse

  function fillSelect(sel, names) {
    names.forEach((name, i) => sel.appendChild(new Option(name, String(i))));
  }

  function applyFilters() {
    const c = $("f-class").value, m = $("f-museum").value, s = $("f-split").value;
    const q = $("f-search").value.trim().toLowerCase();
    const out = [];
    for (let i = 0; i < META.n; i++) {
      if (c !== "" && ITEMS.label[i] !== +c) continue;
      if (m !== "" && ITEMS.museum[i] !== +m) continue;
      if (s !== "" && ITEMS.split[i] !== +s) continue;
      if (q && ITEMS.lname[i].indexOf(q) < 0) continue;
      out.push(i);
    }
    state.filtered = out;
    state.page = 0;
    renderGrid();
  }

  function renderGrid() {
    const pages = Math.max(1, Math.ceil(state.filtered.length / PAGE));
    state.page = Math.min(Math.max(0, state.page), pages - 1);
    const grid = $("grid");
    const frag = document.createDocumentFragment();
    const start = state.page * PAGE;
    for (const i of state.filtered.slice(start, start + PAGE)) frag.appendChild(card(i));
    grid.replaceChildren(frag);
    $("page").textContent = "page " + (state.page + 1) + " of " + pages;
    $("count").textContent = state.filtered.length + " of " + META.n + " images";
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
  }

  // ------------------------------------------------------------------------------------------- neighbours

  function chunkKey(prefix, i) { return prefix + "/" + pad(Math.floor(i / META.chunk), 5); }

  async function neighbours(prefix, i) {
    const c = await load(chunkKey(prefix, i));
    if (!c._ids) { c._ids = new Int32Array(bytes(c.ids)); c._scores = new Float32Array(bytes(c.scores)); }
    const row = (i - c.start) * c.k;
    const out = [];
    for (let j = 0; j < c.k; j++) {
      const id = c._ids[row + j];
      if (id >= 0) out.push({ id: id, score: c._scores[row + j] });
    }
    return out;
  }

  function renderNeighbours(box, summary, i, list) {
    const frag = document.createDocumentFragment();
    let same = 0;
    for (const nb of list) {
      const agree = ITEMS.label[nb.id] === ITEMS.label[i];
      if (agree) same++;
      frag.appendChild(card(nb.id, { score: nb.score, cls: agree ? "same" : "other" }));
    }
    box.replaceChildren(frag);
    box.dataset.count = String(list.length);
    summary.textContent = list.length
      ? same + " of " + list.length + " neighbours share the label “" + META.classes[ITEMS.label[i]] +
        "” (precision@" + list.length + " = " + (same / list.length).toFixed(2) + ")" + recallNote()
      : "this image is not in the compared store";
    return list;
  }

  function recallNote() {
    const r = META.recall;
    return r ? "; approximate search, recall@" + r.k + " " + r.recall.toFixed(3) + " against exact search on " +
      r.queries + " sampled queries" : "";
  }

  function renderQuery(i) {
    const q = $("query");
    const dl = el("dl");
    const add = (k, v) => { dl.appendChild(el("dt", null, k)); dl.appendChild(el("dd", null, v)); };
    add("file", ITEMS.name[i]);
    add("class", META.classes[ITEMS.label[i]]);
    add("museum", META.museums[ITEMS.museum[i]]);
    add("split", META.splits[ITEMS.split[i]]);
    if (ITEMS.width && ITEMS.width[i] !== null) add("size", ITEMS.width[i] + " × " + ITEMS.height[i]);
    add("item", "#" + i);
    q.replaceChildren(picture(i), dl);
  }

  async function show(i) {
    const tClick = performance.now();
    state.current = i;
    if (location.hash !== "#item=" + i) history.replaceState(null, "", "#item=" + i);
    $("detail").hidden = false;
    renderQuery(i);
    for (const f of document.querySelectorAll("figure.thumb")) f.classList.toggle("current", +f.dataset.id === i);
    $("nbr-title").textContent = "Nearest neighbours — " + META.title;
    $("neighbours").dataset.count = "0";
    status("loading neighbours…");
    let a;
    try { a = await neighbours("nbr", i); } catch (e) { fail(e); }
    if (state.current !== i) return;
    renderNeighbours($("neighbours"), $("nbr-summary"), i, a);
    let b = null;
    if (META.compare) {
      $("ncol-b").hidden = false;
      $("nbrb-title").textContent = "Nearest neighbours — " + META.compare.name;
      b = await neighbours("nbrb", i);
      if (state.current !== i) return;
      renderNeighbours($("neighbours-b"), $("nbrb-summary"), i, b);
      if (b.length) {
        const set = new Set(a.map((x) => x.id));
        const shared = b.filter((x) => set.has(x.id)).length;
        $("nbrb-summary").textContent += "; " + shared + " of " + b.length + " also neighbours in " + META.title;
      }
    }
    MAMEX.timing.neighbours = performance.now() - tClick;
    status("computing the similarity distribution…");
    try { await distribution(i, a); } catch (e) { fail(e); }
    MAMEX.timing.histogram = performance.now() - tClick;
    status(META.n + " images · k = " + META.k);
  }

  // ------------------------------------------------------------------------------------------- distribution

  // {dim, vec: Float32Array [m * dim], m}: the dequantised vectors the distribution is computed over: every item,
  // or, in a large collection, a uniform sample of META.dist.n items (data/dist/*.js), loaded on first use.
  let EMB = null;

  function dequantise(c, vec, base) {
    const q = new Int8Array(bytes(c.q));
    const scale = new Float32Array(bytes(c.scale));
    const dim = c.dim;
    for (let r = 0; r < c.count; r++) {
      const s = scale[r], b = (base + r) * dim, qb = r * dim;
      for (let d = 0; d < dim; d++) vec[b + d] = q[qb + d] * s;
    }
  }

  async function embeddings() {
    if (EMB) return EMB;
    const sampled = !!META.dist;
    const prefix = sampled ? "dist/" : "emb/", count = sampled ? META.dist.chunks : META.emb_chunks;
    const keys = [];
    for (let c = 0; c < count; c++) keys.push(prefix + pad(c, 5));
    const chunks = await Promise.all(keys.map(load));
    const dim = chunks[0].dim, m = sampled ? META.dist.n : META.n;
    const vec = new Float32Array(m * dim);
    const ids = sampled ? new Int32Array(m) : null;
    chunks.forEach((c, ci) => {
      dequantise(c, vec, c.start);
      if (ids) ids.set(new Int32Array(bytes(c.ids)), c.start);
      loaded.delete(keys[ci]); // the decoded copy is enough
    });
    EMB = { dim: dim, vec: vec, m: m, ids: ids };
    return EMB;
  }

  async function queryVector(i, E) {
    if (!E.ids) return E.vec.subarray(i * E.dim, (i + 1) * E.dim);
    const c = await load(chunkKey("emb", i));
    const one = new Float32Array(c.count * c.dim);
    dequantise(c, one, 0);
    return one.subarray((i - c.start) * c.dim, (i - c.start + 1) * c.dim);
  }

  async function similarities(i) {
    if (state.pinned === i && state.pinnedSims) return state.pinnedSims;
    const E = await embeddings();
    const qv = await queryVector(i, E);
    const m = E.m, dim = E.dim, v = E.vec, out = new Float32Array(m);
    for (let j = 0; j < m; j++) {
      let s = 0;
      const b = j * dim;
      for (let d = 0; d < dim; d++) s += qv[d] * v[b + d];
      out[j] = s;
    }
    // the query itself is left out of its own distribution
    if (!E.ids) out[i] = NaN; else for (let j = 0; j < m; j++) if (E.ids[j] === i) out[j] = NaN;
    return out;
  }

  function histogram(sims, lo, hi, bins) {
    const h = new Float64Array(bins);
    let n = 0;
    for (let j = 0; j < sims.length; j++) {
      const s = sims[j];
      if (Number.isNaN(s)) continue;
      let b = Math.floor((s - lo) / (hi - lo) * bins);
      if (b < 0) b = 0; else if (b >= bins) b = bins - 1;
      h[b]++; n++;
    }
    for (let b = 0; b < bins; b++) h[b] /= Math.max(n, 1);
    return h;
  }

  async function distribution(i, nbrs) {
    const simsA = await similarities(i);
    const simsB = state.pinned !== null && state.pinned !== i ? state.pinnedSims : null;
    if (state.current !== i) return;
    let lo = Infinity;
    for (const s of simsA) if (s < lo) lo = s;
    if (simsB) for (const s of simsB) if (s < lo) lo = s;
    lo = Math.max(-1, Math.floor(lo * 10) / 10);
    const hi = 1, bins = 80;
    const hA = histogram(simsA, lo, hi, bins);
    const hB = simsB ? histogram(simsB, lo, hi, bins) : null;
    draw(hA, hB, lo, hi, nbrs, i);
    const kth = nbrs.length ? nbrs[nbrs.length - 1].score : NaN;
    let above = 0, total = 0;
    for (const s of simsA) { if (Number.isNaN(s)) continue; total++; if (s >= kth) above++; }
    const ap = META.approx;
    const who = META.dist ? "a uniform sample of " + META.dist.n + " of the " + META.n + " images" : "all " + total + " other images";
    let text = "Cosine similarity of " + who + " to the query (bars; share of the collection per bin). " +
      "Red ticks: the " + nbrs.length + " nearest neighbours at their exact scores; the k-th neighbour (" +
      kth.toFixed(3) + ") is matched or beaten by " + above + (META.dist ? " sampled" : "") + " images (" +
      (100 * above / Math.max(total, 1)).toFixed(2) + " %) in the approximation. Approximation: " + ap.dim +
      "-d truncated SVD, int8; mean |error| " + ap.mean_abs_error.toFixed(3) + ", 99th percentile " +
      ap.p99_abs_error.toFixed(3) + ".";
    if (simsB) text += " Orange: query B, " + ITEMS.name[state.pinned] + " (" + META.classes[ITEMS.label[state.pinned]] + ").";
    $("hist-caption").textContent = text;
  }

  function draw(hA, hB, lo, hi, nbrs, i) {
    const c = $("hist");
    const ratio = window.devicePixelRatio || 1;
    const w = Math.max(300, c.clientWidth || 640), hgt = 220;
    c.width = Math.round(w * ratio); c.height = Math.round(hgt * ratio);
    const g = c.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, w, hgt);
    const L = 44, R = 10, T = 16, B = 30, pw = w - L - R, ph = hgt - T - B;
    let top = 0;
    for (const v of hA) top = Math.max(top, v);
    if (hB) for (const v of hB) top = Math.max(top, v);
    top = top || 1;
    const x = (s) => L + (s - lo) / (hi - lo) * pw;
    const bins = hA.length, bw = pw / bins;
    const bars = (h, color) => {
      g.fillStyle = color;
      for (let b = 0; b < bins; b++) {
        const bh = h[b] / top * ph;
        if (bh > 0) g.fillRect(L + b * bw, T + ph - bh, Math.max(1, bw - 1), bh);
      }
    };
    bars(hA, "rgba(47,109,181,0.75)");
    if (hB) bars(hB, "rgba(210,105,30,0.55)");
    g.strokeStyle = "#c0392b"; g.lineWidth = 1.5;
    for (const nb of nbrs) { g.beginPath(); g.moveTo(x(nb.score), T - 8); g.lineTo(x(nb.score), T + ph * 0.35); g.stroke(); }
    g.strokeStyle = "#5b6570"; g.lineWidth = 1;
    g.beginPath(); g.moveTo(L, T + ph); g.lineTo(L + pw, T + ph); g.moveTo(L, T); g.lineTo(L, T + ph); g.stroke();
    g.fillStyle = "#5b6570"; g.font = "11px system-ui, sans-serif"; g.textAlign = "center";
    for (let s = Math.ceil(lo * 10) / 10; s <= hi + 1e-9; s += 0.1) g.fillText(s.toFixed(1), x(s), T + ph + 14);
    g.fillText("cosine similarity to the query", L + pw / 2, T + ph + 27);
    g.textAlign = "right";
    g.fillText((100 * top).toFixed(1) + " %", L - 4, T + 8);
    g.fillText("0", L - 4, T + ph);
    c.dataset.rendered = String(i);
    c.dataset.items = String(hA.length);
  }

  async function pin() {
    if (state.current === null) return;
    const i = state.current;
    state.pinnedSims = await similarities(i);
    state.pinned = i;
    $("pinned").textContent = "query B: " + ITEMS.name[state.pinned];
    $("unpin").hidden = false;
  }

  function unpin() {
    state.pinned = null;
    state.pinnedSims = null;
    $("pinned").textContent = "";
    $("unpin").hidden = true;
    if (state.current !== null) show(state.current);
  }

  // ------------------------------------------------------------------------------------------- quality table

  function renderQuality() {
    const Q = META.quality, C = META.compare;
    const ks = Q.ks, kmax = ks[ks.length - 1];
    $("quality-intro").textContent = "Share of each image's first k neighbours (cosine, whole collection) that carry its " +
      "class, averaged per class; sorted weakest first; rows below the overall mean are shaded." +
      (C ? " Compared store: " + C.name + " (" + C.matched + " images matched by file name; mean neighbour overlap " +
        C.overlap.toFixed(3) + "); its columns are computed on the matched images." : "");
    const head = el("tr");
    const cols = ["class", "n"].concat(ks.map((k) => "P@" + k));
    if (C) cols.push(...C.quality.ks.map((k) => "P@" + k + " " + C.name));
    cols.forEach((name) => head.appendChild(el("th", null, name)));
    $("quality-table").tHead.replaceChildren(head);
    const bOf = {};
    if (C) for (const r of C.quality.rows) bOf[r.class] = r;
    const all = Q.rows.find((r) => r.class === "all");
    const rows = Q.rows.filter((r) => r.class !== "all").sort((u, v) => u.p[u.p.length - 1] - v.p[v.p.length - 1]);
    const body = document.createDocumentFragment();
    for (const r of rows.concat(all ? [all] : [])) {
      const tr = el("tr", r.class === "all" ? "all" : (all && r.p[r.p.length - 1] < all.p[all.p.length - 1] ? "weak" : ""));
      tr.dataset.cls = r.class;
      const name = el("td");
      if (r.class === "all") name.textContent = "all (mean over images)";
      else {
        const a = el("a", null, r.class);
        a.addEventListener("click", () => {
          $("f-class").value = String(META.classes.indexOf(r.class));
          tab("browse"); applyFilters();
        });
        name.appendChild(a);
      }
      tr.appendChild(name);
      tr.appendChild(el("td", null, r.n));
      r.p.forEach((p, j) => {
        const td = el("td");
        if (ks[j] === kmax) { const bar = el("span", "bar"); bar.style.width = (p * 60).toFixed(0) + "px"; td.appendChild(bar); }
        td.appendChild(document.createTextNode(p.toFixed(3)));
        tr.appendChild(td);
      });
      if (C) {
        const b = bOf[r.class];
        for (let j = 0; j < C.quality.ks.length; j++) tr.appendChild(el("td", null, b ? b.p[j].toFixed(3) : "–"));
      }
      body.appendChild(tr);
    }
    $("quality-table").tBodies[0].replaceChildren(body);
  }

  function renderAbout() {
    const dl = $("about-list");
    const add = (k, v) => { dl.appendChild(el("dt", null, k)); dl.appendChild(el("dd", null, v)); };
    const s = META.store;
    add("store", s.path);
    add("features", [s.arch, s.alpha ? "alpha " + s.alpha : "", s.weights ? "weights " + s.weights : "",
      s.run ? "run " + s.run : "", "layer " + s.layer, s.dim + "-d", s.image_size ? s.image_size + " px" : ""]
      .filter(Boolean).join(", "));
    add("neighbours", META.method + "; k = " + META.k + "; all splits form one collection; an image is never its own neighbour");
    if (META.recall) add("recall", "recall@" + META.recall.k + " " + META.recall.recall.toFixed(4) + " (lowest query " +
      META.recall.min.toFixed(2) + ", 5th percentile " + META.recall.p05.toFixed(2) + ") against exact search on " +
      META.recall.queries + " sampled queries");
    if (META.dist) add("distribution sample", "similarity distributions use a uniform sample of " + META.dist.n +
      " of the " + META.n + " images");
    add("distribution", "computed in the page from " + META.approx.dim + "-d int8 projections; measured on " +
      META.approx.queries + " queries × " + (META.approx.items || "all") + " images: mean |error| " + META.approx.mean_abs_error.toFixed(4) +
      ", 99th percentile " + META.approx.p99_abs_error.toFixed(4) + ", max " + META.approx.max_abs_error.toFixed(4) +
      ", mean Pearson r " + META.approx.mean_pearson_r.toFixed(4));
    add("thumbnails", META.missing_thumbs ? META.missing_thumbs + " image(s) without thumbnail (placeholder shown)" : "all present");
    if (META.compare) add("compared with", META.compare.manifest.path + " (" + META.compare.matched + " images matched)");
  }

  function tab(name) {
    for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.tab === name);
    for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== name;
  }

  // ------------------------------------------------------------------------------------------- start

  async function start() {
    META = await load("meta");
    ITEMS = await load("items");
    THUMB = new Int8Array(bytes(ITEMS.thumb));
    ITEMS.lname = ITEMS.name.map((s) => s.toLowerCase());
    document.title = "Similarity explorer — " + META.title;
    $("title").textContent = "Similarity explorer — " + META.title;
    fillSelect($("f-class"), META.classes);
    fillSelect($("f-museum"), META.museums);
    fillSelect($("f-split"), META.splits);
    for (const id of ["f-class", "f-museum", "f-split"]) $(id).addEventListener("change", applyFilters);
    let timer = null;
    $("f-search").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(applyFilters, 150); });
    $("prev").addEventListener("click", () => { state.page--; renderGrid(); });
    $("next").addEventListener("click", () => { state.page++; renderGrid(); });
    $("pin").addEventListener("click", () => pin().catch(fail));
    $("unpin").addEventListener("click", unpin);
    for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => tab(b.dataset.tab));
    renderQuality();
    renderAbout();
    applyFilters();
    status(META.n + " images · k = " + META.k);
    MAMEX.timing.ready = performance.now() - t0;
    MAMEX.timing.sinceNavigation = performance.now(); // performance.now() counts from navigation start
    document.body.dataset.ready = "1";
    const m = /^#item=(\d+)$/.exec(location.hash);
    if (m && +m[1] < META.n) show(+m[1]);
  }

  start().catch(fail);
})();
