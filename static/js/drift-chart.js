// The drift panel's charts (classification.drift.Drift.chart): the live model's mean
// confidence and unknown share per day, each against the test split's as a dashed line,
// and the mix of predicted classes per day as stacked bars beside the test split's.
(function () {
  const palette = ["#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#0ea5e9", "#84cc16", "#ec4899",
                   "#64748b", "#d97706"];

  function reference(label, value, count, color) {
    return { label, data: Array(count).fill(value), borderColor: color, borderDash: [6, 4], pointRadius: 0,
             borderWidth: 1.5, fill: false };
  }

  function confidenceChart(data) {
    const n = data.days.length;
    const datasets = [
      { label: "mean confidence", data: data.confidence, borderColor: palette[0], backgroundColor: palette[0],
        tension: 0.2 },
      { label: "unknown share", data: data.unknown, borderColor: palette[3], backgroundColor: palette[3],
        tension: 0.2 },
    ];
    if (data.test) {
      datasets.push(reference("test split: confidence", data.test.confidence, n, palette[0]));
      datasets.push(reference("test split: unknown", data.test.unknown, n, palette[3]));
    }
    return new window.Chart(document.getElementById("drift-confidence"), {
      type: "line",
      data: { labels: data.days, datasets },
      options: { maintainAspectRatio: false, animation: false, scales: { y: { min: 0, max: 1 } },
                 plugins: { title: { display: true, text: "Confidence and unknown share per day" } } },
    });
  }

  function mixChart(data) {
    const labels = data.test ? ["test split", ...data.days] : data.days;
    const datasets = Object.entries(data.mix).map(([name, shares], i) => ({
      label: name,
      data: data.test ? [data.test.mix[name], ...shares] : shares,
      backgroundColor: palette[i % palette.length],
    }));
    return new window.Chart(document.getElementById("drift-mix"), {
      type: "bar",
      data: { labels, datasets },
      options: { maintainAspectRatio: false, animation: false,
                 scales: { x: { stacked: true }, y: { stacked: true, min: 0, max: 1 } },
                 plugins: { title: { display: true, text: "Predicted classes per day" } } },
    });
  }

  function draw() {
    const node = document.getElementById("drift-data");
    if (!node || !window.Chart) return;
    const data = JSON.parse(node.textContent);
    window.driftCharts = [confidenceChart(data), mixChart(data)];  // for the browser test
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", draw);
  else draw();
})();
