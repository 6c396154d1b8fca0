
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("landscape-data").textContent);
  const $ = (id) => document.getElementById(id);
  const METRIC = D.metric;
  const LOG = !!D.log, CLIP = D.clip === undefined ? null : D.clip;
  const LABEL = LOG ? "log10 " + METRIC : METRIC;  // what a plane's height and colour are
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                   "#bcbd22", "#17becf"];
  const DIVERGED = "magenta";
  const CONFIG = {responsive: true, displaylogo: false};
  const OPEN = D.open || {pair: -1, batch: -1};  // -1: the mean over pairs (batches); plot's --reduce
  const state = {src: 0, epoch: 0, pair: OPEN.pair, batch: OPEN.batch, shared: true};
  let renders = 0;
  let timer = null;

  // what a source's checkpoints are counted in: "step" (a run with step checkpoints) or "epoch"
  function unit(s) { return s.unit || "epoch"; }
  function esc(t) { return String(t).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;"); }
  function range(n) { return Array.from({length: n}, (_, i) => i); }
  function fmt(v) { return v === null || v === undefined ? "–" : Number(v).toPrecision(4).replace(/\.?0+$/, ""); }
  function rgba(hex, a) {
    const n = parseInt(hex.slice(1), 16);
    return "rgba(" + (n >> 16) + "," + ((n >> 8) & 255) + "," + (n & 255) + "," + a + ")";
  }
  // what `plot --clip/--log` draw of a value: capped at the clip; on a log scale, non-positive values are
  // gaps. A plane draws log10 of it (as plot's surfaces); a line keeps the value on a log axis.
  function clipped(v) { return v !== null && CLIP !== null && v > CLIP ? CLIP : v; }
  function shown(v) {
    v = clipped(v);
    if (!LOG || v === null) return v;
    return v > 0 ? Math.log10(v) : null;
  }
  function onAxis(v) { v = clipped(v); return LOG && v !== null && !(v > 0) ? null : v; }
  function src() { return D.sources[state.src]; }
  function chosen(s) {
    return {pairs: state.pair < 0 ? range(s.pairs) : [state.pair],
            batches: state.batch < 0 ? range(s.batches.length) : [state.batch]};
  }
  function selText(s) {
    const b = state.batch >= 0 ? s.batches[state.batch] : null;
    if (state.pair >= 0 && b !== null) return "pair " + state.pair + ", " + b;
    if (state.pair >= 0) return "pair " + state.pair + ", mean over batches";
    if (b !== null) return b + ", mean over pairs";
    return "mean over pairs and batches";
  }

  // the mean over the chosen pairs and batches, as `plot --reduce` takes it: a point that diverged
  // (null) in any of them is null in the mean; a row not computed for every chosen pair is null
  function plane(s, ei, sel) {
    const Z = s.z[ei], done = s.done[ei], H = s.y.length, W = s.x.length, n = sel.pairs.length * sel.batches.length;
    const z = [], computed = [];
    for (let r = 0; r < H; r++) {
      const ok = sel.pairs.every((p) => done[p][r]);
      computed.push(ok);
      const row = new Array(W).fill(null);
      if (ok) {
        for (let c = 0; c < W; c++) {
          let sum = 0, bad = false;
          for (const p of sel.pairs) for (const b of sel.batches) {
            const v = Z[p][b][r][c];
            if (v === null) { bad = true; break; }
            sum += v;
          }
          if (!bad) row[c] = sum / n;
        }
      }
      z.push(row);
    }
    return {z: z, computed: computed};
  }
  function line(s, ei, sel) {
    const Z = s.z[ei], W = s.x.length, n = sel.pairs.length * sel.batches.length;
    const computed = sel.pairs.every((p) => s.done[ei][p]);
    const v = new Array(W).fill(null), lo = new Array(W).fill(null), hi = new Array(W).fill(null);
    if (computed) {
      for (let c = 0; c < W; c++) {
        let sum = 0, bad = false, mn = Infinity, mx = -Infinity;
        for (const p of sel.pairs) for (const b of sel.batches) {
          const x = Z[p][b][c];
          if (x === null) { bad = true; continue; }
          sum += x; mn = Math.min(mn, x); mx = Math.max(mx, x);
        }
        if (!bad) { v[c] = sum / n; lo[c] = mn; hi[c] = mx; }
      }
    }
    return {v: v, lo: n > 1 ? lo : null, hi: n > 1 ? hi : null, computed: computed};
  }
  function centre(s, ei, sel) {
    const c = s.center[ei];
    if (!c || !c.length) return null;
    let sum = 0;
    for (const b of sel.batches) { if (c[b] === null) return null; sum += c[b]; }
    return sum / sel.batches.length;
  }
  function own(s, sel) {  // each checkpoint's own metric: the mean over the chosen batches
    return s.path.own.map((row) => {
      let sum = 0;
      for (const b of sel.batches) { if (row[b] === null) return null; sum += row[b]; }
      return sum / sel.batches.length;
    });
  }
  function extent(arrays) {
    let lo = Infinity, hi = -Infinity;
    for (const a of arrays) for (const v of a) if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    if (!(lo <= hi)) return [0, 1];
    if (hi <= lo) hi = lo + (Math.abs(lo) * 1e-3 || 1e-3);
    return [lo, hi];
  }
  function values(s, ei, sel) {
    if (D.dims === 2) return [].concat(...plane(s, ei, sel).z).map(shown);
    const l = line(s, ei, sel);
    return l.v.concat(l.hi || [], l.lo || []).map(onAxis);
  }
  function zrange(s, sel, extra) {
    const eis = state.shared ? range(s.epochs.length) : [state.epoch];
    return extent(eis.map((ei) => values(s, ei, sel)).concat([extra || []]));
  }
  function title(s, ei) {
    const e = s.epochs[ei], t = s.epochText[ei];
    return "<b>" + esc(s.name) + "</b> · " + esc(s.model) + " / " + esc(s.dataset) + " · " + esc(s.kindText) +
      " · <b>" + unit(s) + " " + e + "</b><br><span style='font-size:11px'>" + esc(selText(s)) + (t ? " — " + esc(t) : "") +
      "</span>";
  }

  function renderPlane() {
    const s = src(), ei = state.epoch, sel = chosen(s), p = plane(s, ei, sel), e = s.epochs[ei];
    const ownz = s.path ? own(s, sel).map(shown) : null;
    const [lo, hi] = zrange(s, sel, ownz);
    const z = p.z.map((row) => row.map(shown));  // what is drawn: p.z's nulls are diverged, z's may be log gaps
    let gaps = 0;
    p.z.forEach((row, r) => row.forEach((v, c) => { if (v !== null && z[r][c] === null) gaps += 1; }));
    const [xl, yl] = s.axes[ei];
    const diverged = {x: [], y: []};
    p.z.forEach((row, r) => {
      if (!p.computed[r]) return;
      row.forEach((v, c) => { if (v === null) { diverged.x.push(s.x[c]); diverged.y.push(s.y[r]); } });
    });
    const hover = "x %{x:.4g}<br>y %{y:.4g}<br>" + LABEL + " %{z:.5g}<extra></extra>";
    const surface = [{type: "surface", x: s.x, y: s.y, z: z, colorscale: "Viridis", cmin: lo, cmax: hi,
                      colorbar: {title: {text: LABEL}, len: 0.75, thickness: 14}, hovertemplate: hover, name: METRIC}];
    const contour = [{type: "contour", x: s.x, y: s.y, z: z, colorscale: "Viridis", zmin: lo, zmax: hi, zauto: false,
                      autocontour: false, contours: {start: lo, end: hi, size: (hi - lo) / 12, coloring: "heatmap",
                      showlabels: true, labelfont: {size: 9, color: "white"}}, connectgaps: false, showscale: false,
                      line: {width: 0.6, color: "rgba(255,255,255,0.6)"}, hovertemplate: hover, name: METRIC}];
    if (diverged.x.length) {
      surface.push({type: "scatter3d", mode: "markers", x: diverged.x, y: diverged.y, z: diverged.x.map(() => hi),
                    marker: {color: DIVERGED, symbol: "x", size: 3}, name: "diverged", hoverinfo: "skip"});
      contour.push({type: "scatter", mode: "markers", x: diverged.x, y: diverged.y,
                    marker: {color: DIVERGED, symbol: "x", size: 7}, name: "diverged", hoverinfo: "skip"});
    }
    const c0 = centre(s, ei, sel);
    contour.push({type: "scatter", mode: "markers", x: [0], y: [0], name: "centre",
                  marker: {color: "red", symbol: "cross-thin", size: 12, line: {color: "red", width: 2}},
                  hovertemplate: "centre: " + METRIC + " " + fmt(c0) + "<extra></extra>"});
    const annotations = [];
    if (s.path) {
      const P = s.path, labels = P.epochs.map(String);
      // drawn a little above its points (a 3-D scene has no drawing order): the hover says the true values
      const lift = (hi - lo) * 0.015;
      const ownRaw = own(s, sel);
      surface.push({type: "scatter3d", mode: "lines+markers+text", x: P.x, y: P.y, text: labels, customdata: ownRaw,
                    z: ownz.map((v) => (v === null ? null : v + lift)), textposition: "top center", textfont: {size: 10},
                    line: {color: "black", width: 3}, marker: {color: "white", size: 3, line: {color: "black", width: 1}},
                    name: "trajectory", hovertemplate: unit(s) + " %{text}: own " + METRIC + " %{customdata:.5g}<extra></extra>"});
      contour.push({type: "scatter", mode: "lines+markers+text", x: P.x, y: P.y, text: labels, textposition: "top right",
                    textfont: {size: 10}, line: {color: "black", width: 1},
                    marker: {color: "white", size: 7, line: {color: "black", width: 1.2}}, name: "trajectory",
                    customdata: ownRaw, hovertemplate: unit(s) + " %{text}: own " + METRIC + " %{customdata:.5g}<extra></extra>"});
      for (let i = 0; i + 1 < P.x.length; i++) {
        annotations.push({x: P.x[i + 1], y: P.y[i + 1], ax: P.x[i], ay: P.y[i], xref: "x", yref: "y", axref: "x", ayref: "y",
                          text: "", showarrow: true, arrowhead: 2, arrowsize: 1, arrowwidth: 1, arrowcolor: "black",
                          standoff: 4, startstandoff: 4});
      }
    }
    const shapes = [];
    const dy = s.y.length > 1 ? (s.y[1] - s.y[0]) / 2 : 0.5;
    p.computed.forEach((ok, r) => {
      if (!ok) shapes.push({type: "rect", xref: "paper", x0: 0, x1: 1, yref: "y", y0: s.y[r] - dy, y1: s.y[r] + dy,
                            fillcolor: "rgba(150,150,150,0.35)", line: {width: 0}, layer: "below"});
    });
    const t = title(s, ei);
    const surfaceLayout = {title: {text: t, font: {size: 13}}, margin: {l: 0, r: 0, t: 60, b: 0}, uirevision: "keep",
                           showlegend: false,
                           scene: {xaxis: {title: {text: esc(xl)}}, yaxis: {title: {text: esc(yl)}},
                                   zaxis: {title: {text: LABEL}, range: [lo, hi + (hi - lo) * 0.02]},
                                   aspectmode: "manual", aspectratio: {x: 1, y: 1, z: 0.7}}};
    const contourLayout = {title: {text: "contours · " + unit(s) + " " + e + " · centre " + METRIC + " " + fmt(c0), font: {size: 13}},
                           margin: {l: 60, r: 20, t: 60, b: 50}, uirevision: "keep", showlegend: false,
                           xaxis: {title: {text: esc(xl)}, range: [s.x[0], s.x[s.x.length - 1]], zeroline: false},
                           yaxis: {title: {text: esc(yl)}, range: [s.y[0], s.y[s.y.length - 1]], zeroline: false},
                           annotations: annotations, shapes: shapes};
    const missing = p.computed.filter((ok) => !ok).length;
    notes([diverged.x.length ? diverged.x.length + " diverged points (NaN/Inf): magenta ×, left out of the surface" : "",
           missing ? missing + " rows not computed yet: left out (grey)" : "",
           gaps ? gaps + " points at or below 0 left out of the log scale" : "",
           LOG ? "log scale: the plots draw log10 " + METRIC : "",
           CLIP !== null ? "clipped at " + fmt(CLIP) : "",
           "red +: the centre (the checkpoint), " + METRIC + " " + fmt(c0),
           s.path ? "black: the training path, one marker per checkpoint labelled by " + unit(s) + " (on the surface at its own " +
             METRIC + ")" : "",
           s.path && s.path.far ? s.path.far : ""]);
    return Promise.all([Plotly.react("surface", surface, surfaceLayout, CONFIG),
                        Plotly.react("contour", contour, contourLayout, CONFIG)]);
  }

  function renderLine() {
    const s = src(), sel = chosen(s), traces = [], left = [];
    const ownz = s.path ? own(s, sel).map(onAxis) : null;
    const [lo, hi] = zrange(s, sel, ownz);
    let diverged = 0;
    s.epochs.forEach((e, ei) => {
      const l = line(s, ei, sel), colour = PALETTE[ei % PALETTE.length], on = ei === state.epoch;
      if (!l.computed) { left.push(unit(s) + " " + e); return; }
      if (on && l.lo) {
        traces.push({type: "scatter", mode: "lines", x: s.x, y: l.hi.map(onAxis), line: {width: 0}, hoverinfo: "skip",
                     name: "min–max", showlegend: false});
        traces.push({type: "scatter", mode: "lines", x: s.x, y: l.lo.map(onAxis), line: {width: 0}, fill: "tonexty",
                     fillcolor: rgba(colour, 0.2), hoverinfo: "skip", name: "min–max", showlegend: false});
      }
      traces.push({type: "scatter", mode: s.x.length <= 25 ? "lines+markers" : "lines", x: s.x, y: l.v.map(onAxis),
                   name: unit(s) + " " + e, line: {color: colour, width: on ? 3 : 1.2}, marker: {size: on ? 6 : 4},
                   opacity: on ? 1 : 0.35, hovertemplate: unit(s) + " " + e + ": " + METRIC + " %{y:.5g}<extra></extra>"});
      if (on) {
        const bad = s.x.filter((_, c) => l.v[c] === null);
        diverged = bad.length;
        if (bad.length) traces.push({type: "scatter", mode: "markers", x: bad, y: bad.map(() => lo), name: "diverged",
                                     marker: {color: DIVERGED, symbol: "x", size: 9}, hoverinfo: "skip"});
      }
    });
    if (s.path) {
      traces.push({type: "scatter", mode: "markers+text", x: s.path.x, y: ownz, text: s.path.epochs.map(String),
                   textposition: "top right", marker: {color: "white", size: 8, line: {color: "black", width: 1.2}},
                   name: "checkpoints (their own " + METRIC + ")",
                   hovertemplate: unit(s) + " %{text}: own " + METRIC + " %{y:.5g}<extra></extra>"});
    }
    const shapes = [], annotations = [];
    if (s.ends) {
      [[0, unit(s) + "s " + s.epochs.join(", ")], [1, s.ends[1]]].forEach(([t, label]) => {
        shapes.push({type: "line", x0: t, x1: t, yref: "paper", y0: 0, y1: 1, line: {color: "#555", dash: "dash", width: 1}});
        annotations.push({x: t, y: 1, yref: "paper", text: esc(label), showarrow: false, textangle: -90,
                          xanchor: "right", yanchor: "top", font: {size: 10, color: "#444"}});
      });
    }
    // a log axis takes its range in log10 units
    const [ylo, yhi] = !LOG ? [lo, hi] : lo > 0 ? [Math.log10(lo), Math.log10(hi)] : [-1, 0];
    const pad = (yhi - ylo) * 0.04;
    const yaxis = {title: {text: LOG ? METRIC + " (log scale)" : METRIC}, range: [ylo - pad, yhi + pad]};
    if (LOG) yaxis.type = "log";
    const layout = {title: {text: title(s, state.epoch), font: {size: 13}}, margin: {l: 70, r: 20, t: 70, b: 50},
                    uirevision: "keep", xaxis: {title: {text: esc(s.axes[state.epoch][0])}, zeroline: false},
                    yaxis: yaxis, shapes: shapes, annotations: annotations,
                    legend: {font: {size: 10}, traceorder: "normal"}};
    notes([sel.pairs.length * sel.batches.length > 1 ? "band: min–max over the " + selText(s).replace(/^.*mean over /, "") +
           " of the selected " + unit(s) : "",
           diverged ? diverged + " diverged points (NaN/Inf): magenta ×, gaps in the curve" : "",
           left.length ? "not computed yet, left out: " + left.join(", ") : "",
           CLIP !== null ? "clipped at " + fmt(CLIP) : "",
           s.path && s.path.far ? s.path.far : ""]);
    return Plotly.react("curves", traces, layout, CONFIG);
  }

  function notes(lines) {
    const all = lines.filter(Boolean);
    if (D.decimated) all.push(D.decimated);
    $("notes").innerHTML = all.map((t) => "<div>" + esc(t) + "</div>").join("");
  }

  function render() {
    const s = src();
    const slider = $("epoch");
    if (slider.previousSibling && slider.previousSibling.nodeType === 3) slider.previousSibling.nodeValue = unit(s) + " ";
    $("play").title = "step through the " + unit(s) + "s";
    $("epoch-label").textContent = s.epochs[state.epoch] + (s.epochOf && s.epochOf[state.epoch] ? " (" + s.epochOf[state.epoch] + ")" : "") + "  (" + (state.epoch + 1) + " of " + s.epochs.length + ")";
    const done = D.dims === 2 ? renderPlane() : renderLine();
    return Promise.resolve(done).then(() => {
      renders += 1;
      document.body.dataset.renders = String(renders);
    });
  }

  function options(select, items, value) {
    select.innerHTML = items.map(([v, t]) => "<option value='" + v + "'>" + esc(t) + "</option>").join("");
    select.value = String(value);
  }

  function setSource(i) {
    state.src = i;
    const s = src();
    state.epoch = s.epochs.length - 1;
    state.pair = Math.min(Math.max(state.pair, s.pairs > 1 ? -1 : 0), s.pairs - 1);
    state.batch = Math.min(Math.max(state.batch, s.batches.length > 1 ? -1 : 0), s.batches.length - 1);
    const slider = $("epoch");
    slider.max = String(s.epochs.length - 1);
    slider.value = String(state.epoch);
    slider.disabled = s.epochs.length < 2;
    $("play").disabled = s.epochs.length < 2;
    const pairs = range(s.pairs).map((p) => [p, "pair " + p]);
    if (s.pairs > 1) pairs.push([-1, "mean over pairs"]);
    options($("pair"), pairs, state.pair);
    const batches = s.batches.map((b, i) => [i, b]);
    if (s.batches.length > 1) batches.push([-1, "mean over batches"]);
    options($("batch"), batches, state.batch);
  }

  options($("run"), D.sources.map((s, i) => [i, s.label]), 0);
  $("run-box").hidden = D.sources.length < 2;
  setSource(0);
  $("run").addEventListener("change", (ev) => { setSource(Number(ev.target.value)); render(); });
  $("epoch").addEventListener("input", (ev) => { state.epoch = Number(ev.target.value); render(); });
  $("pair").addEventListener("change", (ev) => { state.pair = Number(ev.target.value); render(); });
  $("batch").addEventListener("change", (ev) => { state.batch = Number(ev.target.value); render(); });
  $("shared").addEventListener("change", (ev) => { state.shared = ev.target.checked; render(); });
  $("play").addEventListener("click", () => {
    if (timer !== null) { clearInterval(timer); timer = null; $("play").innerHTML = "&#9654;"; return; }
    $("play").innerHTML = "&#10074;&#10074;";
    timer = setInterval(() => {
      const slider = $("epoch");
      slider.value = String((Number(slider.value) + 1) % (src().epochs.length));
      slider.dispatchEvent(new Event("input"));
    }, 900);
  });
  render();
})();
