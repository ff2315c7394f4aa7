// zlab Gallery: the browser half of zlab.views.gallery.Gallery (an anywidget ES module, no imports).
// The kernel sends thumbnails once (binary buffers) and the cells' positions; everything a click or a
// key does (selection, paging, full view, A/B compare) happens here, asking the kernel only for a
// full-size image the first time it is shown, and telling it picks, reruns and exports.

const KEYS_WE_USE = new Set([
  "ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", "PageUp", "PageDown", "Enter", " ", "Escape",
  "f", "F", "a", "A", "b", "B", "c", "C", "n", "N", "p", "P", "0", "1", "2", "3", "4", "5",
]);

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c);
  return el;
}

function render({ model, el }) {
  const S = {
    sel: -1, view: "grid", mode: "side", a: -1, b: -1, fit: true,
    thumbURLs: [], full: new Map(), waiting: new Map(), flicker: null, swipe: 50,
    live: true, zoom: 0, // zoom 0: cells sized so every column of the x axis fits the width; else pixels
    figs: new Map(), byKey: new Map(), shownPicks: {}, unanswered: null, // the grid on screen: cell index → its figure
  };
  const root = h("div", { class: `zg ${model.get("live_class")}`, tabindex: "0", "data-lm-suppress-shortcuts": "true" });
  el.append(root);
  // While this widget lives, the static copy shown before it (zlab.views.fallback) is redundant: hide it.
  const sid = model.get("static_id");
  if (sid) document.querySelectorAll(`.zlab-static[data-zlab="${sid}"]`).forEach((n) => (n.style.display = "none"));

  const cells = () => model.get("cells");
  const cell = (i) => cells()[i];
  const picks = () => model.get("picks") || {};
  const say = (text) => { msg.textContent = text; };

  // ------------------------------------------------------------------ the kernel: alive, or say so
  const DEAD = "This gallery's kernel is gone (restarted or shut down): stars, ratings, reruns and exports are off "
    + "and nothing here is saved. Run the cell again (or zlab.Gallery(run_dir) in a running kernel) for a live gallery.";
  function gone() {
    if (!S.live) return;
    S.live = false;
    root.classList.add("zg-dead");
    clearTimeout(S.unanswered);
    draw();
  }
  function send(content) {
    // A closed comm throws ("Cannot send") or drops the message: either way, nothing reaches the kernel.
    if (S.live && el.closest && el.closest(".jupyter-widgets-disconnected")) gone();
    if (!S.live) { say(DEAD); return false; }
    try { model.send(content); return true; } catch (e) { gone(); return false; }
  }

  // ------------------------------------------------------------------ images
  function buildThumbs() {
    S.thumbURLs.forEach((u) => u && URL.revokeObjectURL(u));
    S.thumbURLs = model.get("thumbs").map((b) => (b && b.byteLength ? URL.createObjectURL(new Blob([b], { type: "image/jpeg" })) : null));
  }
  function full(i) {
    // resolves to {url} or {note}; each image is asked for once
    if (S.full.has(i)) return Promise.resolve(S.full.get(i));
    return new Promise((resolve) => {
      if (!S.waiting.has(i)) { S.waiting.set(i, []); send({ type: "full", i }); }
      S.waiting.get(i).push(resolve);
    });
  }
  function onCustom(msg, buffers) {
    if (msg && msg.type === "picked") { clearTimeout(S.unanswered); return; } // the kernel wrote picks.json
    if (!msg || msg.type !== "full") return;
    const got = buffers && buffers.length ? { url: URL.createObjectURL(new Blob([buffers[0]], { type: msg.mime || "image/png" })) } : { note: msg.note || "no image" };
    S.full.set(msg.i, got);
    (S.waiting.get(msg.i) || []).forEach((f) => f(got));
    S.waiting.delete(msg.i);
  }

  // ------------------------------------------------------------------ positions and moves
  const page = () => model.get("page_index");
  const onPage = (g) => cells().filter((c) => c.page === g).sort((p, q) => p.row - q.row || p.col - q.col || p.slot - q.slot);
  const order = () => [...cells()].sort((p, q) => p.page - q.page || p.row - q.row || p.col - q.col || p.slot - q.slot);
  function at(g, r, c) { return cells().filter((x) => x.page === g && x.row === r && x.col === c).sort((p, q) => p.slot - q.slot); }

  function select(i, { show = true } = {}) {
    if (i < 0 || i >= cells().length) return;
    S.sel = i;
    const c = cell(i);
    const changed = model.get("selected") !== c.key || c.page !== page();
    if (c.page !== page()) model.set("page_index", c.page);
    model.set("selected", c.key); // a few bytes to the kernel; the grid is redrawn here by the change event
    model.save_changes();
    if (show && !changed) onSelected();
  }
  function move(dx, dy) {
    const c = cell(S.sel);
    if (!c) return;
    const nx = model.get("x_labels").length, ny = model.get("y_labels").length;
    if (dx) {
      const here = at(c.page, c.row, c.col);
      const k = here.findIndex((x) => x.i === c.i) + dx;
      if (k >= 0 && k < here.length) return select(here[k].i);
      for (let col = c.col + dx; col >= 0 && col < nx; col += dx) {
        const there = at(c.page, c.row, col);
        if (there.length) return select((dx > 0 ? there[0] : there[there.length - 1]).i);
      }
    } else {
      for (let row = c.row + dy; row >= 0 && row < ny; row += dy) {
        const there = at(c.page, row, c.col);
        if (there.length) return select(there[Math.min(c.slot, there.length - 1)].i);
      }
    }
  }
  function step(d) {
    const seq = order();
    const k = seq.findIndex((x) => x.i === S.sel);
    const next = seq[(k + d + seq.length) % seq.length];
    if (next) select(next.i);
  }
  function turn(d) {
    const n = model.get("page_labels").length;
    const g = Math.max(0, Math.min(n - 1, page() + d));
    if (g === page()) return;
    model.set("page_index", g);
    model.save_changes();
    const first = onPage(g)[0];
    if (first) select(first.i); else draw();
  }

  // ------------------------------------------------------------------ actions
  function pick(change) {
    const c = cell(S.sel);
    if (!c) return;
    if (!model.get("can_write")) return say("picks need a run directory (pass root=…)");
    if (!send({ type: "pick", key: c.key, ...change })) return;
    const cur = picks()[c.key] || { favourite: false, rating: 0 };
    model.set("picks", { ...picks(), [c.key]: { ...cur, ...change } }); // shown at once; the kernel sends back the truth
    // A kernel that is busy answers later; one that never answers is gone or stuck: say so rather than pretend.
    clearTimeout(S.unanswered);
    S.unanswered = setTimeout(() => say("⚠ the kernel has not confirmed this pick yet (busy running a cell, or gone): "
      + "it is saved only once the kernel answers"), 5000);
  }
  function toggleFavourite() { const c = cell(S.sel); if (c) pick({ favourite: !(picks()[c.key] || {}).favourite }); }
  function setAB(which) {
    if (S.sel < 0) return;
    S[which] = S.sel;
    say(`${which.toUpperCase()}: ${cell(S.sel).label}` + (S.a >= 0 && S.b >= 0 ? " · press C to compare" : ""));
    draw();
  }
  function compare() {
    if (S.a < 0 || S.b < 0 || S.a === S.b) return say("choose two cells: select one and press A, another and press B");
    S.view = "compare";
    draw();
  }
  async function copyParams() {
    const c = cell(S.sel);
    if (!c) return;
    const text = JSON.stringify(c.request || Object.fromEntries(c.params), null, 2);
    try { await navigator.clipboard.writeText(text); say("copied the parameters"); }
    catch (e) {
      const area = h("textarea", {}); area.value = text; root.append(area); area.select();
      const ok = document.execCommand && document.execCommand("copy"); area.remove();
      say(ok ? "copied the parameters" : text);
    }
  }
  function rerun(seedText) {
    const c = cell(S.sel);
    if (!c) return;
    if (send({ type: "rerun", key: c.key, seed: seedText === "" ? null : Number(seedText) })) say("rerunning …");
  }
  function exportPicks() {
    const starred = Object.entries(picks()).filter(([, p]) => p.favourite).map(([k]) => k);
    const keys = starred.length ? starred : [S.a, S.b].filter((i) => i >= 0).map((i) => cell(i).key);
    if (!keys.length) return say("star some cells (F) or pick A and B first");
    if (send({ type: "export", keys })) say(`exporting ${keys.length} cell(s) …`);
  }

  // ------------------------------------------------------------------ drawing
  const bar = h("div", { class: "zg-bar" });
  const banner = h("div", { class: "zg-banner", role: "alert" });
  const note = h("div", { class: "zg-note" });
  const main = h("div", { class: "zg-main" });
  const stage = h("div", { class: "zg-stage" });
  const side = h("div", { class: "zg-side" });
  const msg = h("div", { class: "zg-msg", role: "status" });
  main.append(stage, side);
  root.append(banner, bar, note, main, msg);

  function axisSelect(name) {
    const value = model.get(name);
    const sel = h("select", { "aria-label": name, onchange: (e) => { model.set(name, e.target.value); model.save_changes(); } },
      h("option", { value: "" }, "(none)"),
      model.get("columns").map((c) => h("option", { value: c, selected: c === value }, c)));
    return h("label", {}, `${name} `, sel);
  }
  function drawBar() {
    const labels = model.get("page_labels");
    const nstar = Object.values(picks()).filter((p) => p.favourite).length;
    bar.replaceChildren(
      axisSelect("x"), axisSelect("y"), axisSelect("page"),
      h("span", { class: "zg-pager" },
        h("button", { title: "previous page (PageUp)", disabled: page() <= 0, onclick: () => turn(-1) }, "◀"),
        h("span", { class: "zg-pagelabel" }, labels[page()] || ""),
        h("button", { title: "next page (PageDown)", disabled: page() >= labels.length - 1, onclick: () => turn(1) }, "▶")),
      h("button", { class: "zg-compare", title: "compare A and B (C)", disabled: S.a < 0 || S.b < 0, onclick: compare }, "compare A/B"),
      h("button", { class: "zg-export", title: "export the starred cells", disabled: !S.live, onclick: exportPicks }, `export ★ (${nstar})`),
      h("span", { class: "zg-zoom" },
        h("button", { title: "smaller cells", "aria-label": "zoom out", onclick: () => zoom(0.8) }, "−"),
        h("button", { class: S.zoom ? "" : "zg-on", title: "fit every column to the width", "aria-label": "zoom to fit", onclick: () => zoom(0) }, "fit"),
        h("button", { title: "larger cells", "aria-label": "zoom in", onclick: () => zoom(1.25) }, "+")),
    );
    note.textContent = model.get("note");
    banner.textContent = S.live ? "" : DEAD;
  }
  function zoom(factor) {
    S.zoom = factor ? Math.max(32, Math.min(1024, Math.round(cellWidth() * factor))) : 0;
    drawBar();
    sizeCells();
  }
  function stackDepth() {
    let most = 1;
    const seen = new Map();
    for (const c of cells()) if (c.page === page()) {
      const k = `${c.row}:${c.col}`;
      seen.set(k, (seen.get(k) || 0) + 1);
      most = Math.max(most, seen.get(k));
    }
    return most;
  }
  function cellWidth() {
    // Fit: every column of the x axis visible at the output's width (thumbnails are never drawn larger
    // than they were made); zoomed: the chosen width.
    if (S.zoom) return S.zoom;
    const made = model.get("cell_width"), nx = Math.max(1, model.get("x_labels").length), k = stackDepth();
    const label = model.get("y") ? 96 : 0;
    const avail = (stage.clientWidth || root.clientWidth || 800) - label - 4 * (nx + 2) - 6 * nx * (k - 1) - 2;
    return Math.max(32, Math.min(made, Math.floor(avail / (nx * k))));
  }
  function sizeCells() {
    const w = cellWidth();
    root.style.setProperty("--zg-w", `${w}px`);
    root.style.setProperty("--zg-h", `${Math.round(w * model.get("aspect"))}px`);
    root.classList.toggle("zg-fitted", !S.zoom);
  }
  function thumb(c, big = false) {
    const url = S.thumbURLs[c.i];
    if (!url) return h("div", { class: "zg-ph" }, c.note || "no image");
    return h("img", { src: url, alt: c.label, draggable: "false", class: big ? "zg-big" : "" });
  }
  function marks(c) {
    const p = picks()[c.key] || {};
    const tags = [];
    if (p.favourite) tags.push(h("span", { class: "zg-star", title: "favourite" }, "★"));
    if (p.rating) tags.push(h("span", { class: "zg-rating", title: "rating" }, `${p.rating}/5`));
    if (c.i === S.a) tags.push(h("span", { class: "zg-ab" }, "A"));
    if (c.i === S.b) tags.push(h("span", { class: "zg-ab" }, "B"));
    return tags.length ? h("div", { class: "zg-marks" }, tags) : null;
  }
  function drawGrid() {
    const xs = model.get("x_labels"), ys = model.get("y_labels"), g = page();
    sizeCells();
    S.figs = new Map();
    S.byKey = new Map(cells().map((c) => [c.key, c.i]));
    const hasY = !!model.get("y");
    const table = h("table", { class: "zg-grid" });
    table.append(h("thead", {}, h("tr", {}, hasY ? h("th") : null, xs.map((x) => h("th", { scope: "col" }, x)))));
    const body = h("tbody");
    ys.forEach((ylabel, r) => {
      const tr = h("tr", {}, hasY ? h("th", { scope: "row" }, ylabel) : null);
      xs.forEach((_, col) => {
        const slots = at(g, r, col).map((c) => S.figs.set(c.i,
          h("figure", {
            class: `zg-cell${c.i === S.sel ? " zg-sel" : ""}${c.note ? " zg-failed" : ""}`, "data-i": c.i, title: c.label,
            onclick: (e) => {
              if (e.shiftKey || e.ctrlKey || e.metaKey) { select(c.i, { show: false }); setAB(S.a < 0 || S.b >= 0 ? "a" : "b"); if (S.b >= 0 && S.a >= 0 && S.a !== S.b) { /* ready */ } return; }
              select(c.i, { show: false }); S.view = "full"; draw(); root.focus();
            },
          }, h("div", { class: "zg-box" }, thumb(c)), marks(c), c.caption ? h("figcaption", {}, c.caption) : null)).get(c.i));
        tr.append(h("td", {}, h("div", { class: "zg-slots" }, slots)));
      });
      body.append(tr);
    });
    table.append(body);
    stage.replaceChildren(h("div", { class: "zg-scroll" }, table));
    S.shownPicks = picks();
    reveal(S.figs.get(S.sel));
  }
  function reveal(fig) {
    if (fig && fig.scrollIntoView) fig.scrollIntoView({ block: "nearest", inline: "nearest" });
  }
  // Incremental updates: a key changes one or two cells, not the grid.
  function gridShown() { return S.view === "grid" && S.figs.size > 0 && stage.querySelector(".zg-grid"); }
  function onSelected() {
    const found = cells().findIndex((c) => c.key === model.get("selected"));
    if (found < 0 || !gridShown() || !S.figs.has(found)) return draw();
    S.sel = found;
    const fig = S.figs.get(found), old = stage.querySelector(".zg-sel");
    if (old !== fig) {
      if (old) old.classList.remove("zg-sel");
      fig.classList.add("zg-sel");
      reveal(fig);
    }
    drawSide();
  }
  function onPicks() {
    if (!gridShown()) return draw();
    const now = picks(), was = S.shownPicks;
    for (const key of new Set([...Object.keys(now), ...Object.keys(was)])) { // the picked cells, not all of them
      const i = S.byKey.get(key), fig = S.figs.get(i);
      if (!fig || JSON.stringify(now[key] || null) === JSON.stringify(was[key] || null)) continue;
      const old = fig.querySelector(".zg-marks");
      if (old) old.remove();
      const fresh = marks(cell(i));
      if (fresh) fig.append(fresh);
    }
    S.shownPicks = now;
    const exporter = bar.querySelector(".zg-export");
    if (exporter) exporter.textContent = `export ★ (${Object.values(now).filter((p) => p.favourite).length})`;
    drawSide();
  }
  function fullImage(i, cls) {
    const c = cell(i);
    const box = h("div", { class: `zg-fullbox ${cls || ""}` }, thumb(c, true)); // the thumbnail until the full image arrives
    full(i).then((got) => {
      if (got.url) {
        const img = h("img", { src: got.url, alt: c.label, class: `zg-full${S.fit ? " zg-fit" : ""}`, "data-i": i, draggable: "false" });
        box.replaceChildren(img);
      } else box.replaceChildren(h("div", { class: "zg-ph zg-phbig" }, got.note));
    });
    return box;
  }
  function drawFull() {
    const c = cell(S.sel);
    if (!c) { S.view = "grid"; return drawGrid(); }
    const tools = h("div", { class: "zg-tools" },
      h("button", { title: "back to the grid (Esc)", onclick: () => { S.view = "grid"; draw(); } }, "✕ grid"),
      h("button", { title: "previous (←)", onclick: () => step(-1) }, "◀ prev"),
      h("button", { title: "next (→)", onclick: () => step(1) }, "next ▶"),
      h("button", { title: "fit the width / actual pixels", onclick: () => { S.fit = !S.fit; draw(); } }, S.fit ? "1:1" : "fit"),
      h("span", { class: "zg-title" }, c.label));
    stage.replaceChildren(h("div", { class: "zg-view zg-fullview" }, tools, fullImage(S.sel)));
  }
  function drawCompare() {
    if (S.flicker) { clearInterval(S.flicker); S.flicker = null; }
    const A = cell(S.a), B = cell(S.b);
    const modes = ["side", "swipe", "flicker"].map((m) =>
      h("button", { class: m === S.mode ? "zg-on" : "", onclick: () => { S.mode = m; draw(); } }, m));
    const tools = h("div", { class: "zg-tools" },
      h("button", { title: "back to the grid (Esc)", onclick: () => { S.view = "grid"; draw(); } }, "✕ grid"), ...modes,
      h("span", { class: "zg-title" }, `A: ${A.label}  ·  B: ${B.label}`));
    let body;
    if (S.mode === "side") {
      body = h("div", { class: "zg-side-by-side" },
        h("figure", {}, fullImage(S.a), h("figcaption", {}, `A · ${A.label}`)),
        h("figure", {}, fullImage(S.b), h("figcaption", {}, `B · ${B.label}`)));
    } else if (S.mode === "swipe") {
      const top = fullImage(S.b, "zg-top");
      top.style.clipPath = `inset(0 0 0 ${S.swipe}%)`;
      const range = h("input", { type: "range", min: "0", max: "100", value: String(S.swipe), "aria-label": "swipe",
        oninput: (e) => { S.swipe = Number(e.target.value); top.style.clipPath = `inset(0 0 0 ${S.swipe}%)`; } });
      const stack = h("div", { class: "zg-swipe" }, fullImage(S.a, "zg-under"), top);
      stack.addEventListener("mousemove", (e) => {
        if (!e.buttons) return;
        const r = stack.getBoundingClientRect();
        S.swipe = Math.max(0, Math.min(100, (100 * (e.clientX - r.left)) / r.width));
        range.value = String(S.swipe); top.style.clipPath = `inset(0 0 0 ${S.swipe}%)`;
      });
      body = h("div", {}, stack, h("div", { class: "zg-swipebar" }, "A ", range, " B"));
    } else {
      const holder = h("div", { class: "zg-flicker" }, fullImage(S.a), fullImage(S.b));
      const label = h("div", { class: "zg-flicklabel" }, "A");
      let showB = false;
      const flip = () => { showB = !showB; holder.classList.toggle("zg-showb", showB); label.textContent = showB ? "B" : "A"; };
      S.flip = flip;
      S.flicker = setInterval(flip, 700);
      body = h("div", {}, label, holder);
    }
    stage.replaceChildren(h("div", { class: "zg-view zg-compareview" }, tools, body));
  }
  function drawSide() {
    const c = cell(S.sel);
    if (!c) return side.replaceChildren();
    const p = picks()[c.key] || {};
    const stars = [1, 2, 3, 4, 5].map((n) =>
      h("button", { class: `zg-r${(p.rating || 0) >= n ? " zg-on" : ""}`, title: `rate ${n} (${n})`, disabled: !S.live, onclick: () => pick({ rating: p.rating === n ? 0 : n }) }, "★"));
    const seed = h("input", { type: "number", placeholder: "random", class: "zg-seed", "aria-label": "seed" });
    side.replaceChildren(...[
      h("div", { class: "zg-sidetitle" }, c.label),
      c.note ? h("div", { class: "zg-error" }, c.note) : null,
      h("div", { class: "zg-actions" },
        h("button", { class: `zg-fav${p.favourite ? " zg-on" : ""}`, title: "favourite (F)", disabled: !S.live, onclick: toggleFavourite }, p.favourite ? "★ favourite" : "☆ favourite"),
        h("span", { class: "zg-stars" }, stars)),
      h("div", { class: "zg-actions" },
        h("button", { title: "open full size (Enter)", onclick: () => { S.view = "full"; draw(); } }, "open"),
        h("button", { title: "compare slot A (A)", onclick: () => setAB("a") }, "set A"),
        h("button", { title: "compare slot B (B)", onclick: () => setAB("b") }, "set B"),
        h("button", { title: "copy the request as JSON", onclick: copyParams }, "copy parameters")),
      h("div", { class: "zg-actions" }, h("button", { disabled: !model.get("can_write") || !S.live, onclick: () => rerun(seed.value) }, "rerun with seed"), seed),
      h("table", { class: "zg-params" }, c.params.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))),
    ].filter(Boolean));
  }
  function draw() {
    // A redraw replaces the button that had the focus: keep it in the widget so keys keep working.
    const hadFocus = root.contains(document.activeElement);
    const key = model.get("selected");
    const found = cells().findIndex((c) => c.key === key);
    if (found >= 0) S.sel = found; else if (S.sel < 0 || S.sel >= cells().length) S.sel = onPage(page())[0]?.i ?? -1;
    if (S.view !== "compare" && S.flicker) { clearInterval(S.flicker); S.flicker = null; }
    root.dataset.view = S.view;
    drawBar();
    if (S.view === "full") drawFull(); else if (S.view === "compare") drawCompare(); else drawGrid();
    drawSide();
    if (hadFocus && !root.contains(document.activeElement)) root.focus({ preventScroll: true });
  }

  // ------------------------------------------------------------------ keyboard (captured: JupyterLab must not see it)
  root.addEventListener("keydown", (e) => {
    const typing = e.target && ["INPUT", "SELECT", "TEXTAREA"].includes(e.target.tagName) && e.target.type !== "range";
    if (e.key === "Enter" && (e.shiftKey || e.ctrlKey || e.metaKey)) return; // run the cell, as usual
    e.stopPropagation();
    if (typing && e.key !== "Escape") return;
    if (!KEYS_WE_USE.has(e.key) || e.altKey || e.ctrlKey || e.metaKey) return;
    e.preventDefault();
    const k = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    const v = S.view;
    if (k === "Escape") { S.view = "grid"; draw(); root.focus(); }
    else if (k === "ArrowLeft") v === "grid" ? move(-1, 0) : step(-1);
    else if (k === "ArrowRight") v === "grid" ? move(1, 0) : step(1);
    else if (k === "ArrowUp") v === "grid" && move(0, -1);
    else if (k === "ArrowDown") v === "grid" && move(0, 1);
    else if (k === "PageUp") turn(-1);
    else if (k === "PageDown") turn(1);
    else if (k === "n") step(1);
    else if (k === "p") step(-1);
    else if (k === "Enter" || k === " ") { if (v === "compare" && S.mode === "flicker" && S.flip) S.flip(); else { S.view = "full"; draw(); } }
    else if (k === "f") toggleFavourite();
    else if (k >= "0" && k <= "5") pick({ rating: Number(k) });
    else if (k === "a") setAB("a");
    else if (k === "b") setAB("b");
    else if (k === "c") compare();
  });

  const redraw = () => draw();
  const rethumb = () => { buildThumbs(); S.full.clear(); draw(); };
  const told = () => say(model.get("message"));
  const lost = () => gone(); // the widget manager marks models dead when their kernel restarts or dies
  // The widget manager marks a dead model's view "disconnected"; look now and then, so the banner shows
  // without waiting for a click (the model's own event is not always sent).
  const watch = setInterval(() => { if (el.closest && el.closest(".jupyter-widgets-disconnected")) gone(); }, 1000);
  const resized = new ResizeObserver(() => { if (!S.zoom && gridShown()) sizeCells(); });
  resized.observe(root);
  model.on("change:cells", redraw);
  model.on("change:picks", onPicks);
  model.on("change:page_index", redraw);
  model.on("change:cell_width", redraw);
  model.on("change:selected", onSelected);
  model.on("comm_live_update", lost);
  model.on("comm:close", lost);

  model.on("change:thumbs", rethumb);
  model.on("change:note", redraw);
  model.on("change:message", told);
  model.on("msg:custom", onCustom);
  buildThumbs();
  draw();
  return () => {
    if (S.flicker) clearInterval(S.flicker);
    resized.disconnect();
    clearInterval(watch);
    model.off("change:cells", redraw); model.off("change:picks", onPicks); model.off("change:page_index", redraw); model.off("change:cell_width", redraw);
    model.off("change:selected", onSelected); model.off("comm_live_update", lost); model.off("comm:close", lost); model.off("change:thumbs", rethumb); model.off("change:note", redraw);
    model.off("change:message", told); model.off("msg:custom", onCustom);
    S.thumbURLs.forEach((u) => u && URL.revokeObjectURL(u));
    S.full.forEach((g) => g.url && URL.revokeObjectURL(g.url));
  };
}

export default { render };
