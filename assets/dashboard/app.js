// backroom dashboard: confirmations for actions, and live queue counts.
"use strict";

document.addEventListener("submit", (event) => {
  const message = event.target.getAttribute("data-confirm");
  if (message && !window.confirm(message)) event.preventDefault();
});

async function refreshQueues(table) {
  try {
    const response = await fetch(table.dataset.live, { credentials: "same-origin" });
    if (!response.ok) return;
    const { items } = await response.json();
    for (const queue of items) {
      const row = table.querySelector(`tr[data-queue="${queue.name}"]`);
      if (!row) continue;
      for (const cell of row.querySelectorAll("td[data-field]")) {
        const field = cell.dataset.field;
        const value = field === "paused" ? (queue.paused ? "paused" : "running") : String(queue[field]);
        const target = cell.querySelector("a") || cell;
        if (target.textContent !== value) target.textContent = value;
      }
    }
  } catch (_) {
    // A failed refresh is retried on the next tick.
  }
}

window.addEventListener("DOMContentLoaded", () => {
  const table = document.querySelector("table[data-live]");
  if (table) setInterval(() => refreshQueues(table), 1500);
  const chart = document.getElementById("throughput");
  if (chart) setInterval(() => { chart.src = "/admin/charts/throughput.svg?t=" + Date.now(); }, 15000);
});
