// Loss and accuracy per epoch (train and validation) on the job page. The data
// comes from the progress section htmx re-renders every 2 s; the charts update
// in place instead of being rebuilt.
(function () {
  const charts = {};
  const series = [
    ["", "Train", "#2563eb"],
    ["val_", "Validation", "#f59e0b"],
  ];

  function history() {
    const node = document.getElementById("job-history");
    return node ? JSON.parse(node.textContent) : [];
  }

  function draw() {
    if (!window.Chart) return;
    const rows = history();
    for (const metric of ["loss", "accuracy"]) {
      const labels = rows.map((row) => row.epoch);
      const datasets = series.map(([prefix, label, color]) => ({
        label, borderColor: color, backgroundColor: color, tension: 0.2,
        data: rows.map((row) => row[prefix + metric] ?? null),
      }));
      if (charts[metric]) {
        charts[metric].data.labels = labels;
        charts[metric].data.datasets.forEach((d, i) => { d.data = datasets[i].data; });
        charts[metric].update();
        continue;
      }
      const canvas = document.getElementById(metric + "-chart");
      if (!canvas) continue;
      charts[metric] = new Chart(canvas, {
        type: "line",
        data: { labels, datasets },
        options: {
          animation: false, maintainAspectRatio: false,
          plugins: { title: { display: true, text: metric === "loss" ? "Loss" : "Accuracy" } },
          scales: { x: { title: { display: true, text: "Epoch" } }, y: metric === "accuracy" ? { min: 0, max: 1 } : { beginAtZero: true } },
        },
      });
    }
  }

  document.addEventListener("DOMContentLoaded", draw);
  document.addEventListener("htmx:afterSwap", draw);
})();
