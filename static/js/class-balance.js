// Stacked bar chart of images per class and split on the dataset page.
document.addEventListener("DOMContentLoaded", () => {
  const canvas = document.getElementById("class-balance");
  const source = document.getElementById("class-balance-data");
  if (!canvas || !source || !window.Chart) return;
  const data = JSON.parse(source.textContent);
  const series = [["train", "Train", "#2563eb"], ["val", "Validation", "#f59e0b"], ["test", "Test", "#15803d"]];
  new Chart(canvas, {
    type: "bar",
    data: {
      labels: data.labels,
      datasets: series.map(([key, label, color]) => ({ label, data: data[key], backgroundColor: color })),
    },
    options: {
      animation: false, maintainAspectRatio: false,
      scales: { x: { stacked: true, ticks: { autoSkip: data.labels.length > 30 } }, y: { stacked: true, beginAtZero: true } },
    },
  });
});
