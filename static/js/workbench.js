// Labelling workbench: keyboard-first labelling of the grid's images.
// Every change is sent at once to the dataset API (label, undo, accept-suggestions),
// one request at a time so each carries the version the previous one returned;
// a 409 shows who changed the image and takes the server's label and version.
(function () {
  "use strict";
  const grid = document.getElementById("wb-grid");
  const configNode = document.getElementById("workbench-config");
  if (!grid || !configNode) return;
  const config = JSON.parse(configNode.textContent);
  const csrf = document.querySelector("input[name=csrfmiddlewaretoken]").value;
  const status = document.getElementById("wb-status");
  const tiles = Array.from(grid.querySelectorAll(".wb-tile"));
  const keyToClass = new Map();
  const usedKeys = new Set();
  config.classes.forEach(function (c) {
    if (c.key) { keyToClass.set(c.key, c.name); usedKeys.add(c.key); }
  });
  let focusIndex = 0;
  let anchor = 0;
  let queue = Promise.resolve();
  let pending = 0;
  let saved = false;  // a change on this page was saved
  // Labelling takes images out of these filters, so after changes the next images are
  // on this same page number: "next page" reloads it instead of skipping a page.
  const SHRINKING = ["unlabelled", "labelled", "review", "disagree"];
  const shrinking = SHRINKING.includes(config.filter.show) || config.filter.label_id !== null;

  // --- focus and selection --------------------------------------------------------

  function focusTile(index, scroll) {
    if (!tiles.length) return;
    focusIndex = Math.max(0, Math.min(tiles.length - 1, index));
    tiles.forEach(function (t, i) { t.tabIndex = i === focusIndex ? 0 : -1; });
    tiles[focusIndex].focus({ preventScroll: scroll === false });
  }

  function isSelected(tile) { return tile.getAttribute("aria-selected") === "true"; }
  function select(tile, on) { tile.setAttribute("aria-selected", on ? "true" : "false"); }
  function selection() { return tiles.filter(isSelected); }
  function clearSelection() { tiles.forEach(function (t) { select(t, false); }); }

  function selectRange(from, to) {
    const [a, b] = from < to ? [from, to] : [to, from];
    for (let i = a; i <= b; i++) select(tiles[i], true);
  }

  // The tiles an action applies to: the selection, or else the focused tile.
  function targets() {
    const chosen = selection();
    return chosen.length ? chosen : (tiles.length ? [tiles[focusIndex]] : []);
  }

  function columns() {
    const top = tiles[0].offsetTop;
    const n = tiles.findIndex(function (t) { return t.offsetTop !== top; });
    return n === -1 ? tiles.length : n;
  }

  // --- tiles and progress ---------------------------------------------------------

  function percent(confidence) { return Math.round(parseFloat(confidence) * 100) + "%"; }

  function renderTile(tile) {
    const label = tile.dataset.label;
    const suggestion = tile.dataset.suggestion;
    tile.querySelector(".wb-label").textContent = label || "unlabelled";
    tile.classList.toggle("wb-disagree", !!(label && suggestion && label !== suggestion));
  }

  const counts = new Map();
  let labelled = 0;
  document.querySelectorAll("#wb-class-counts tr").forEach(function (row) {
    counts.set(row.dataset.class, parseInt(row.querySelector(".wb-count").textContent, 10));
  });
  counts.forEach(function (n) { labelled += n; });
  const total = parseInt(document.getElementById("wb-total").textContent, 10);

  function countChange(from, to) {
    if (from === to) return;
    if (from) { counts.set(from, (counts.get(from) || 1) - 1); labelled -= 1; }
    if (to) { ensureClass(to); counts.set(to, (counts.get(to) || 0) + 1); labelled += 1; }
    renderProgress();
  }

  function renderProgress() {
    document.getElementById("wb-labelled").textContent = labelled;
    document.getElementById("wb-overall").value = labelled;
    document.querySelectorAll("#wb-class-counts tr").forEach(function (row) {
      const n = counts.get(row.dataset.class) || 0;
      row.querySelector(".wb-count").textContent = n;
      row.querySelector("progress").value = n;
    });
  }

  // A class created on the fly joins the legend (with the next free key), the
  // dropdown and the progress table; a reload sorts it in by name.
  function ensureClass(name) {
    if (counts.has(name)) return;
    counts.set(name, 0);
    const own = name.toLowerCase();  // a one-character name keeps its own key, as on the server
    const key = own.length === 1 && config.keys.includes(own) && !usedKeys.has(own) ? own
      : Array.from(config.keys).find(function (k) { return !usedKeys.has(k); }) || "";
    if (key) {
      usedKeys.add(key);
      keyToClass.set(key, name);
      const item = document.createElement("li");
      item.dataset.class = name;
      const kbd = document.createElement("kbd");
      kbd.textContent = key;
      item.append(kbd, " " + name);
      document.getElementById("wb-keys").append(item);
    }
    const option = new Option(key ? name + " (" + key + ")" : name, name);
    document.getElementById("wb-class").append(option);
    const row = document.createElement("tr");
    row.dataset.class = name;
    const nameCell = document.createElement("td");
    nameCell.textContent = name;
    const countCell = document.createElement("td");
    countCell.className = "num wb-count";
    countCell.textContent = "0";
    const barCell = document.createElement("td");
    const bar = document.createElement("progress");
    bar.max = Math.max(total, 1);
    bar.value = 0;
    bar.setAttribute("aria-label", name);
    barCell.append(bar);
    row.append(nameCell, countCell, barCell);
    document.getElementById("wb-class-counts").append(row);
  }

  function tileById(id) { return grid.querySelector('.wb-tile[data-id="' + id + '"]'); }

  // The server's word on an image: its label and the version the next change must carry.
  function applyServer(image) {
    const tile = tileById(image.id);
    if (!tile) return;
    const label = image.label || "";
    countChange(tile.dataset.label, label);
    tile.dataset.label = label;
    tile.dataset.version = image.version;
    tile.classList.remove("wb-conflict");
    renderTile(tile);
  }

  // --- talking to the API ---------------------------------------------------------

  function say(text, kind) {
    status.textContent = text;
    status.className = "wb-status" + (kind ? " " + kind : "");
  }

  function conflictText(conflict) {
    if (conflict.deleted) return "image " + conflict.image + " was deleted";
    let text = "image " + conflict.image + " was changed to " + (conflict.label || "unlabelled");
    if (conflict.changed_by) text += " by " + conflict.changed_by;
    if (conflict.changed_at) text += " at " + new Date(conflict.changed_at).toLocaleTimeString();
    return text;
  }

  // The server's word on images someone else changed. A change already waiting in the
  // queue for such a tile is dropped (see assign): the person has not seen the new label.
  function markConflicts(conflicts) {
    conflicts.forEach(function (c) {
      applyServer({ id: c.image, label: c.label, version: c.version });
      const tile = tileById(c.image);
      if (tile) {
        tile.classList.add("wb-conflict");
        tile.dataset.epoch = (parseInt(tile.dataset.epoch || "0", 10) + 1).toString();
      }
    });
  }

  function showConflicts(body) {
    const conflicts = body.conflicts || [];
    markConflicts(conflicts);
    if (/^Not undone/.test(body.detail || "")) { say(body.detail, "error"); return; }
    const shown = conflicts.slice(0, 3).map(conflictText).join("; ");
    const more = conflicts.length > 3 ? " and " + (conflicts.length - 3) + " more" : "";
    say("Not saved: " + (shown || body.detail || "someone else changed these images") + more +
        ". Nothing in this change was applied; the tiles now show the current labels.", "error");
  }

  // DRF answers a bad request with {"detail": ...} or with field errors, possibly nested.
  function errorText(data, code) {
    if (data.detail) return data.detail;
    const first = JSON.stringify(data).match(/"([^"]{3,})"\]/);
    return first ? first[1] : "the server answered " + code + ".";
  }

  function setBusy(delta) {
    pending += delta;
    grid.dataset.pending = pending;
    grid.setAttribute("aria-busy", pending ? "true" : "false");
  }

  // POST `body()` to `url` after every earlier request has finished: the body is
  // built then, so it carries the versions the earlier responses brought.
  function send(url, body, onSuccess) {
    setBusy(1);
    queue = queue.then(function () {
      const payload = body();
      if (payload === null) return null;
      return fetch(url, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrf, "Accept": "application/json" },
        body: JSON.stringify(payload),
      }).then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (data) {
          if (response.ok) onSuccess(data);
          else if (response.status === 409) showConflicts(data);
          else say("Not saved: " + errorText(data, response.status), "error");
        });
      });
    }).catch(function () {
      say("Not saved: the server could not be reached.", "error");
    }).finally(function () { setBusy(-1); });
  }

  function describe(images) {
    const names = new Set(images.map(function (i) { return i.label || "unlabelled"; }));
    const n = images.length;
    return n + (n === 1 ? " image" : " images") + " \u2192 " + Array.from(names).join(", ");
  }

  // Give each tile the label `labelOf(tile)` returns (a name, or null to unlabel).
  function assign(chosen, labelOf, action) {
    if (!chosen.length) return;
    const ids = chosen.map(function (t) { return t.dataset.id; });
    const epochs = new Map(chosen.map(function (t) { return [t.dataset.id, t.dataset.epoch || "0"]; }));
    send(config.urls.label, function () {
      const seen = ids.map(tileById).filter(function (tile) {
        return tile && (tile.dataset.epoch || "0") === epochs.get(tile.dataset.id);  // no conflict since the key press
      });
      const changes = seen.map(function (tile) {
        return { image: parseInt(tile.dataset.id, 10), label: labelOf(tile), version: parseInt(tile.dataset.version, 10) };
      });
      return changes.length ? { changes: changes, source: "workbench" } : null;
    }, function (data) {
      data.images.forEach(applyServer);
      saved = true;
      say((action || "Saved") + ": " + describe(data.images) + (pageDone() ? ". Page done: PageDown for the next images." : ""));
    });
  }

  function assignClass(name) {
    const chosen = targets();
    assign(chosen, function () { return name; });
    afterAssign(chosen);
  }

  // A labelled selection is done with; focus moves past what was labelled.
  function afterAssign(chosen) {
    if (!chosen.length) return;
    const last = tiles.indexOf(chosen[chosen.length - 1]);
    if (selection().length) clearSelection();
    focusTile(Math.max(last, focusIndex) + 1);
  }

  function acceptFocused() {
    const chosen = targets().filter(function (t) { return t.dataset.suggestion; });
    if (!chosen.length) { say("No suggestion to accept here.", "error"); return; }
    assign(chosen, function (tile) { return tile.dataset.suggestion; }, "Accepted");
    afterAssign(chosen);
  }

  // The last tile labelled and focused: time for the next page.
  function pageDone() {
    const last = tiles[tiles.length - 1];
    return document.activeElement === last && last.dataset.label !== "";
  }

  // Where PageDown / PageUp (and the pager's links) go, once every change is saved.
  function turnPage(step, href) {
    const link = document.querySelector(".pager a[rel=" + (step > 0 ? "next" : "prev") + "]");
    const reload = step > 0 && saved && shrinking;
    const target = reload ? window.location.href : href || (link && link.href);
    if (!target) { say(step > 0 ? "This is the last page." : "This is the first page."); return; }
    queue.then(function () { window.location.href = target; });
  }

  function undo() {
    send(config.urls.undo, function () { return {}; }, function (data) {
      data.images.forEach(applyServer);
      const kept = data.kept || [];
      markConflicts(kept);
      const off = data.images.filter(function (i) { return !tileById(i.id); }).length;
      say("Undone: " + describe(data.images) + (off ? " (" + off + " not on this page)" : "") +
          (kept.length ? "; kept " + kept.slice(0, 3).map(conflictText).join("; ") +
            (kept.length > 3 ? " and " + (kept.length - 3) + " more" : "") : ""));
    });
  }

  function acceptForFilter() {
    const min = parseFloat(document.getElementById("wb-min-confidence").value);
    if (!(min >= 0 && min <= 100)) { say("Choose a confidence between 0 and 100%.", "error"); return; }
    const body = Object.assign({ min_confidence: min / 100 }, config.filter);
    send(config.urls.accept, function () { return body; }, function (data) {
      const text = "Accepted " + data.accepted + " suggestions at " + min + "% or more (Ctrl+Z undoes).";
      if (!data.accepted) { say(text); return; }
      // The response names no images: reload to show them, keeping the message.
      sessionStorage.setItem("workbench-status", text);
      window.location.reload();
    });
  }

  // --- events ---------------------------------------------------------------------

  function inField(target) {
    return !!(target.closest && target.closest("input, select, textarea, button, a, [contenteditable]"));
  }

  const moves = {
    ArrowLeft: function () { return -1; },
    ArrowRight: function () { return 1; },
    ArrowUp: function () { return -columns(); },
    ArrowDown: function () { return columns(); },
    Home: function () { return -tiles.length; },
    End: function () { return tiles.length; },
  };

  document.addEventListener("keydown", function (event) {
    if (inField(event.target) || event.altKey || !tiles.length) return;
    const key = event.key;
    if ((event.ctrlKey || event.metaKey) && key.toLowerCase() === "z" && !event.shiftKey) {
      event.preventDefault();
      undo();
      return;
    }
    if (event.ctrlKey || event.metaKey) return;  // leave the browser's shortcuts alone
    if (moves[key]) {
      event.preventDefault();
      const from = focusIndex;
      focusTile(focusIndex + moves[key]());
      if (event.shiftKey) selectRange(from, focusIndex);
      anchor = event.shiftKey ? anchor : focusIndex;
    } else if (key === " ") {
      event.preventDefault();
      select(tiles[focusIndex], !isSelected(tiles[focusIndex]));
      anchor = focusIndex;
    } else if (key === "PageDown" || key === "PageUp") {
      event.preventDefault();
      turnPage(key === "PageDown" ? 1 : -1);
    } else if (key === "Escape") {
      clearSelection();
    } else if (key === "Enter") {
      event.preventDefault();
      acceptFocused();
    } else if (key === "Backspace" || key === "Delete") {
      event.preventDefault();
      const chosen = targets();
      assign(chosen, function () { return null; }, "Unlabelled");
      afterAssign(chosen);
    } else if (!event.shiftKey && keyToClass.has(key)) {
      event.preventDefault();
      assignClass(keyToClass.get(key));
    }
  });

  grid.addEventListener("click", function (event) {
    const tile = event.target.closest(".wb-tile");
    if (!tile || event.target.closest("a")) return;  // a tile's "more like this" link leaves the page
    const index = tiles.indexOf(tile);
    if (event.shiftKey) {
      selectRange(anchor, index);
    } else if (event.ctrlKey || event.metaKey) {
      select(tile, !isSelected(tile));
      anchor = index;
    } else {
      anchor = index;
    }
    focusTile(index);
  });
  // No text selection when shift-clicking a range.
  grid.addEventListener("mousedown", function (event) { if (event.shiftKey) event.preventDefault(); });

  grid.addEventListener("focusin", function (event) {
    const index = tiles.indexOf(event.target);
    if (index !== -1) focusIndex = index;
  });

  document.getElementById("wb-assign").addEventListener("click", function () {
    const name = document.getElementById("wb-class").value;
    if (!name) { say("Choose a class first.", "error"); return; }
    assignClass(name);
  });

  function addClass() {
    const field = document.getElementById("wb-new-class");
    const name = field.value.trim();
    if (!name) { say("Type the new class's name first.", "error"); field.focus(); return; }
    field.value = "";
    assignClass(name);
  }
  document.getElementById("wb-new-class-add").addEventListener("click", addClass);
  document.getElementById("wb-new-class").addEventListener("keydown", function (event) {
    if (event.key === "Enter") { event.preventDefault(); addClass(); }
  });
  document.getElementById("wb-accept").addEventListener("click", acceptForFilter);
  document.querySelectorAll(".pager a[rel]").forEach(function (link) {
    link.addEventListener("click", function (event) {
      event.preventDefault();
      turnPage(link.rel === "next" ? 1 : -1, link.href);
    });
  });
  // Changes still waiting to be sent would be lost with the page: the browser asks first.
  window.addEventListener("beforeunload", function (event) {
    if (pending > 0) { event.preventDefault(); event.returnValue = ""; }
  });

  // The scoring card (htmx) announces new suggestions; reloading now would drop the
  // focus and selection, so say so and let the person choose when.
  document.body.addEventListener("scoring-finished", function () {
    say("New model suggestions are ready: reload the page to see them.");
  });

  const carried = sessionStorage.getItem("workbench-status");
  if (carried) { sessionStorage.removeItem("workbench-status"); say(carried); }
  setBusy(0);
  focusTile(0, false);
})();
