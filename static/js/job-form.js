// New-job form: picking an architecture fills in that architecture's recommended
// settings (the same defaults the API and the `train` command start from).
(function () {
  const form = document.getElementById("job-form");
  const presets = JSON.parse(document.getElementById("arch-presets").textContent);
  const arch = form.elements.namedItem("arch");
  arch.addEventListener("change", function () {
    const preset = presets[arch.value];
    if (!preset) return;
    for (const [name, value] of Object.entries(preset)) {
      const input = form.elements.namedItem(name);
      if (!input || name === "arch") continue;
      if (input.type === "checkbox") input.checked = Boolean(value);
      else input.value = String(value);
    }
  });
})();
