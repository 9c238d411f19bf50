// The admin dashboard's behaviour: draw every <canvas data-chart> with Chart.js (vendored, served
// locally), and keep live job views fresh by polling the dashboard's JSON endpoints.
(function () {
  "use strict";
  const charts = new Map();

  function draw(canvas) {
    const spec = JSON.parse(canvas.dataset.chart);
    spec.options = Object.assign({ responsive: true, maintainAspectRatio: false, animation: false }, spec.options || {});
    const chart = new Chart(canvas, spec);
    charts.set(canvas.id || canvas, chart);
    canvas.dataset.drawn = "1";
    return chart;
  }

  function setProgress(el, fraction) {
    const bar = el.querySelector("div");
    if (bar) bar.style.width = (Math.max(0, Math.min(1, fraction || 0)) * 100).toFixed(1) + "%";
  }

  // A job row or job page carries data-job-url; poll it until the job is finished.
  function pollJob(el) {
    const url = el.dataset.jobUrl;
    const finished = ["succeeded", "failed", "cancelled", "done", "rejected"];
    async function tick() {
      let job;
      try {
        const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
        if (!response.ok) return setTimeout(tick, 3000);
        job = await response.json();
      } catch (e) {
        return setTimeout(tick, 3000);
      }
      el.querySelectorAll("[data-field]").forEach((node) => {
        const value = job[node.dataset.field];
        if (value === undefined || value === null) return;
        node.textContent = value;
        if (node.classList.contains("badge")) node.className = "badge " + value;
      });
      el.querySelectorAll(".progress").forEach((node) => setProgress(node, job.progress));
      // A new metric or chart appeared: the server lays charts out, so fetch the page again.
      if (el.dataset.signature !== undefined && job.signature !== el.dataset.signature) {
        window.location.reload();
        return;
      }
      if (job.curves) {
        el.querySelectorAll("canvas[data-curve]").forEach((canvas) => {
          const chart = charts.get(canvas.id);
          const curve = job.curves[canvas.dataset.curve];
          if (!chart || !curve) return;
          chart.data.labels = job.curves.epoch;
          curve.forEach((series, i) => { if (chart.data.datasets[i]) chart.data.datasets[i].data = series; });
          chart.update("none");
        });
      }
      if (finished.includes(job.status)) {
        el.dataset.finished = "1";
        if (el.dataset.reloadWhenDone) window.location.reload();
        return;
      }
      setTimeout(tick, Number(el.dataset.pollMs || 1000));
    }
    tick();
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("canvas[data-chart]").forEach(draw);
    document.querySelectorAll("[data-job-url]").forEach(pollJob);
  });
})();
