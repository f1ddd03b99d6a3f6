// Click a column heading of a `table.sortable` to sort by it; click again to
// reverse. Headings say how to compare with data-sort="number" or "text".
(function () {
  function value(row, index, kind) {
    const text = row.children[index].textContent.trim();
    return kind === "number" ? parseFloat(text) || 0 : text.toLowerCase();
  }

  function sortBy(table, heading) {
    const index = Array.from(heading.parentNode.children).indexOf(heading);
    const kind = heading.dataset.sort;
    const ascending = heading.getAttribute("aria-sort") !== "ascending";
    const body = table.tBodies[0];
    const rows = Array.from(body.rows);
    rows.sort((a, b) => {
      const x = value(a, index, kind), y = value(b, index, kind);
      return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
    });
    table.querySelectorAll("th[data-sort]").forEach((th) => th.removeAttribute("aria-sort"));
    heading.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    rows.forEach((row) => body.appendChild(row));
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("table.sortable th[data-sort]").forEach((heading) => {
      heading.tabIndex = 0;
      heading.addEventListener("click", () => sortBy(heading.closest("table"), heading));
      heading.addEventListener("keydown", (event) => {
        if (event.key === "Enter") sortBy(heading.closest("table"), heading);
      });
    });
  });
})();
