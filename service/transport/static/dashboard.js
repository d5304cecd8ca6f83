// gradwire's dashboard: draws a run's curves and heatmaps on canvases from its event stream
// (/runs/ID/events: Server-Sent Events), live while it trains; and two runs' losses together.
// No library: this file and dashboard.css are all the pages load.
"use strict";

(function () {
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
  const MARGIN = { left: 56, right: 12, top: 10, bottom: 28 };

  function finite(value) {
    return typeof value === "number" && Number.isFinite(value);
  }

  function label(value) {
    if (value === 0) return "0";
    const size = Math.abs(value);
    return size >= 1e4 || size < 1e-3 ? value.toExponential(1) : String(Number(value.toPrecision(3)));
  }

  // series: [{name, points: [[x, y], ...], dashed}]
  function lines(canvas, series) {
    const g = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height;
    g.clearRect(0, 0, w, h);
    const all = series.flatMap((s) => s.points).filter((p) => finite(p[1]));
    canvas.dataset.points = String(series.length ? series[0].points.length : 0);
    if (!all.length) return;
    let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
    let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
    if (x0 === x1) x1 = x0 + 1;
    if (y0 === y1) { y0 -= 0.5; y1 += 0.5; }
    const px = (x) => MARGIN.left + ((x - x0) / (x1 - x0)) * (w - MARGIN.left - MARGIN.right);
    const py = (y) => h - MARGIN.bottom - ((y - y0) / (y1 - y0)) * (h - MARGIN.top - MARGIN.bottom);
    g.strokeStyle = "#999";
    g.fillStyle = "#333";
    g.font = "11px sans-serif";
    g.beginPath();
    g.moveTo(MARGIN.left, MARGIN.top);
    g.lineTo(MARGIN.left, h - MARGIN.bottom);
    g.lineTo(w - MARGIN.right, h - MARGIN.bottom);
    g.stroke();
    for (let i = 0; i <= 4; i++) {
      const y = y0 + ((y1 - y0) * i) / 4;
      g.fillText(label(y), 4, py(y) + 4);
      const x = Math.round(x0 + ((x1 - x0) * i) / 4);
      g.fillText(String(x), px(x) - 6, h - 10);
    }
    series.forEach((s, i) => {
      const points = s.points.filter((p) => finite(p[1]));
      if (!points.length) return;
      g.strokeStyle = COLORS[i % COLORS.length];
      g.setLineDash(s.dashed ? [5, 4] : []);
      g.beginPath();
      points.forEach((p, j) => (j ? g.lineTo(px(p[0]), py(p[1])) : g.moveTo(px(p[0]), py(p[1]))));
      g.stroke();
      g.setLineDash([]);
      g.fillStyle = COLORS[i % COLORS.length];
      g.fillText(s.name, w - MARGIN.right - 150, MARGIN.top + 12 + 13 * i);
    });
  }

  // One row per layer, one column per epoch; colour by log10 of the value.
  function heatmap(canvas, epochs, field) {
    const g = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height;
    g.clearRect(0, 0, w, h);
    canvas.dataset.points = String(epochs.length);
    if (!epochs.length) return;
    const layers = Object.keys(epochs[epochs.length - 1][field] || {});
    const logs = epochs.flatMap((r) => layers.map((l) => Math.log10((r[field] || {})[l]))).filter(finite);
    if (!layers.length || !logs.length) return;
    const lo = Math.min(...logs), hi = Math.max(...logs);
    const cw = (w - MARGIN.left) / epochs.length, ch = (h - MARGIN.bottom) / layers.length;
    epochs.forEach((r, i) => {
      layers.forEach((l, j) => {
        const v = Math.log10((r[field] || {})[l]);
        const t = finite(v) ? (hi > lo ? (v - lo) / (hi - lo) : 0.5) : 0;
        g.fillStyle = `rgb(${Math.round(68 + 185 * t)},${Math.round(1 + 230 * t)},${Math.round(84 + 50 * (1 - t))})`;
        g.fillRect(MARGIN.left + i * cw, j * ch, Math.ceil(cw), Math.ceil(ch));
      });
    });
    g.fillStyle = "#333";
    g.font = "11px sans-serif";
    layers.forEach((l, j) => g.fillText(l.slice(0, 8), 2, j * ch + ch / 2 + 4));
    g.fillText(`10^${lo.toFixed(1)} … 10^${hi.toFixed(1)}`, MARGIN.left, h - 8);
  }

  function series(epochs, field) {
    return epochs.map((r) => [r.epoch, r[field]]);
  }

  function follow(runId, onEpochs, onRun) {
    const source = new EventSource(`/runs/${encodeURIComponent(runId)}/events`);
    source.addEventListener("epochs", (e) => onEpochs(JSON.parse(e.data)));
    source.addEventListener("run", (e) => onRun(JSON.parse(e.data)));
    source.addEventListener("end", () => source.close());
    return source;
  }

  function runPage(section) {
    const epochs = [];
    const byId = (id) => document.getElementById(id);
    const draw = () => {
      const metric = epochs.length ? epochs[epochs.length - 1].metric_name : "metric";
      lines(byId("loss"), [
        { name: "train", points: series(epochs, "train_loss") },
        { name: "validation", points: series(epochs, "val_loss"), dashed: true },
      ]);
      lines(byId("metric"), [
        { name: `train ${metric}`, points: series(epochs, "train_metric") },
        { name: `validation ${metric}`, points: series(epochs, "val_metric"), dashed: true },
      ]);
      lines(byId("learning_rate"), [{ name: "learning rate", points: series(epochs, "learning_rate") }]);
      heatmap(byId("grad_norms"), epochs, "grad_norms");
      heatmap(byId("update_ratios"), epochs, "update_ratios");
      if (epochs.length) byId("epoch").textContent = String(epochs[epochs.length - 1].epoch);
    };
    const seen = new Set();
    follow(
      section.dataset.run,
      (records) => {
        records.filter((r) => !seen.has(r.epoch)).forEach((r) => { seen.add(r.epoch); epochs.push(r); });
        draw();
      },
      (run) => {
        const status = byId("status");
        status.textContent = run.stalled ? `${run.status} (its server is silent)` : run.status;
        status.className = `status ${run.status}`;
        byId("stop_reason").textContent = run.stop_reason || "—";
      },
    );
  }

  function comparePage(section) {
    const ids = section.dataset.compareRuns.split(" ");
    const epochs = ids.map(() => []);
    const draw = () => {
      lines(
        document.getElementById("compare"),
        ids.flatMap((id, i) => [
          { name: `${id.slice(0, 8)} train`, points: series(epochs[i], "train_loss") },
          { name: `${id.slice(0, 8)} validation`, points: series(epochs[i], "val_loss"), dashed: true },
        ]),
      );
    };
    ids.forEach((id, i) => follow(id, (records) => { epochs[i].push(...records); draw(); }, () => {}));
  }

  function compareForm(form) {
    form.addEventListener("submit", (e) => {
      if (form.querySelectorAll("input[name=pick]:checked").length !== 2) {
        e.preventDefault();
        alert("Pick two runs to compare.");
      }
    });
  }

  document.querySelectorAll("section[data-run]").forEach(runPage);
  document.querySelectorAll("section[data-compare-runs]").forEach(comparePage);
  document.querySelectorAll("form[data-compare]").forEach(compareForm);
})();
