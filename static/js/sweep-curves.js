// Validation accuracy per epoch of every trial on the sweep page, one line each (the best
// one thick). The data comes from the progress section htmx re-renders every 3 s.
(function () {
  let chart = null;
  const palette = ["#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#0ea5e9", "#84cc16", "#ec4899"];

  function curves() {
    const node = document.getElementById("sweep-curves");
    return node ? JSON.parse(node.textContent) : [];
  }

  function datasets() {
    return curves().map((trial, i) => ({
      label: trial.label, borderColor: palette[i % palette.length], backgroundColor: palette[i % palette.length],
      borderWidth: trial.best ? 4 : 1.5, tension: 0.2, pointRadius: 2,
      data: trial.points.map(([epoch, value]) => ({ x: epoch, y: value })),
    }));
  }

  function draw() {
    const canvas = document.getElementById("sweep-chart");
    if (!window.Chart || !canvas) return;
    if (chart) {
      chart.data.datasets = datasets();
      chart.update();
      return;
    }
    chart = new Chart(canvas, {
      type: "line",
      data: { datasets: datasets() },
      options: {
        animation: false, maintainAspectRatio: false, parsing: true,
        scales: { x: { type: "linear", title: { display: true, text: "Epoch" } }, y: { min: 0, max: 1, title: { display: true, text: "Validation accuracy" } } },
      },
    });
  }

  document.addEventListener("DOMContentLoaded", draw);
  document.addEventListener("htmx:afterSwap", draw);
})();
