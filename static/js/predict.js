// Prediction page: drag-and-drop onto the picker and previews of the chosen images.
// Without JavaScript the plain file input still works.
(function () {
  "use strict";
  const zone = document.getElementById("dropzone");
  const input = zone && zone.querySelector("input[type=file]");
  const previews = document.getElementById("previews");
  if (!zone || !input || !previews) return;

  function show(files) {
    previews.replaceChildren();
    Array.from(files).forEach(function (file) {
      const tile = document.createElement("figure");
      tile.className = "tile";
      const img = document.createElement("img");
      img.alt = file.name;
      img.src = URL.createObjectURL(file);
      img.onload = function () { URL.revokeObjectURL(img.src); };
      const caption = document.createElement("figcaption");
      caption.textContent = file.name;
      tile.append(img, caption);
      previews.append(tile);
    });
  }

  ["dragenter", "dragover"].forEach(function (name) {
    zone.addEventListener(name, function (event) {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  });
  ["dragleave", "drop"].forEach(function (name) {
    zone.addEventListener(name, function () { zone.classList.remove("dragging"); });
  });
  zone.addEventListener("drop", function (event) {
    event.preventDefault();
    if (!event.dataTransfer || !event.dataTransfer.files.length) return;
    input.files = event.dataTransfer.files;
    show(input.files);
  });
  input.addEventListener("change", function () { show(input.files); });
})();
