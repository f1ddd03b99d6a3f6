// Upload forms marked data-upload-progress send with XHR so the page can show a
// progress bar; the server's redirect (the import page) is then followed.
document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form[data-upload-progress]")) {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const bar = form.querySelector("progress");
      const status = form.querySelector(".upload-status");
      const button = form.querySelector("button[type=submit]");
      const xhr = new XMLHttpRequest();
      xhr.open("POST", form.action || window.location.href);
      xhr.upload.addEventListener("progress", (e) => {
        if (!e.lengthComputable) return;
        bar.hidden = false;
        bar.value = e.loaded / e.total;
        status.textContent = `Uploading: ${Math.round((100 * e.loaded) / e.total)}% of ${(e.total / 1048576).toFixed(1)} MB`;
      });
      xhr.addEventListener("load", () => {
        if (xhr.status < 400 && xhr.responseURL && xhr.responseURL !== window.location.href) {
          window.location.assign(xhr.responseURL);
        } else {
          document.open(); document.write(xhr.responseText); document.close();
        }
      });
      xhr.addEventListener("error", () => {
        status.textContent = "The upload failed (connection lost). Nothing was imported; try again.";
        button.disabled = false;
      });
      button.disabled = true;
      status.textContent = "Uploading…";
      xhr.send(new FormData(form));
    });
  }
});
