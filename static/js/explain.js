// "Where it looked" in the evaluation report's galleries: the overlay image is made only
// when its <details> is first opened, since each costs the server 49 model calls. One
// listener on the document also serves galleries that htmx swaps in later.
document.addEventListener("toggle", function (event) {
  const details = event.target;
  if (!(details instanceof HTMLDetailsElement) || !details.classList.contains("explain") || !details.open) return;
  if (details.querySelector("img")) return;
  const img = document.createElement("img");
  img.src = details.dataset.src;
  img.alt = details.dataset.alt || "";
  img.width = 96;
  img.height = 96;
  details.appendChild(img);
}, true);  // toggle does not bubble: listen while it goes down
