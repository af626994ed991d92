// aqueue dashboard: live updates over server-sent events, no build step, no dependency.
// The page's <body data-live="tasks|workers|queues"> names its stream (/stream/NAME).
"use strict";

(function () {
  const live = document.body.dataset.live;
  const badge = document.getElementById("live");
  if (!live || !window.EventSource) {
    if (badge) badge.hidden = true;
    return;
  }
  const filter = document.getElementById("filter");

  function wanted(row) {
    if (!filter) return true;
    const name = filter.elements.name.value.trim();
    const state = filter.elements.state.value;
    return (!name || row.dataset.name.includes(name)) && (!state || row.dataset.state === state);
  }

  function onTask(data) {
    const body = document.getElementById("tasks");
    const holder = document.createElement("tbody");
    holder.innerHTML = data.html;
    const row = holder.firstElementChild;
    const old = document.getElementById(row.id);
    if (old) old.remove();
    if (!wanted(row)) return;
    body.prepend(row);
    while (body.rows.length > 500) body.deleteRow(-1);
  }

  function onTable(data) {
    document.getElementById(live).innerHTML = data.html;
  }

  const source = new EventSource("/stream/" + live);
  source.onopen = function () {
    badge.className = "live on";
    badge.textContent = "live";
  };
  source.onerror = function () {
    badge.className = "live off";
    badge.textContent = "reconnecting";
  };
  source.onmessage = function (message) {
    const data = JSON.parse(message.data);
    if (live === "tasks") onTask(data);
    else onTable(data);
  };

  if (filter) {
    // Filter the rows already shown as the fields change; submitting still filters server-side.
    filter.addEventListener("input", function () {
      for (const row of Array.from(document.getElementById("tasks").rows)) {
        row.hidden = !wanted(row);
      }
    });
  }
})();
