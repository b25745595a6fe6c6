// The console's own script: small bar charts (Chart.js), the live event tail and a task's live output (EventSource).
"use strict";

function drawCharts(root) {
  for (const canvas of root.querySelectorAll("canvas.chart")) {
    if (canvas.dataset.drawn) continue;
    canvas.dataset.drawn = "1";
    new Chart(canvas, {
      type: "bar",
      data: {
        labels: JSON.parse(canvas.dataset.labels),
        datasets: [{ label: canvas.dataset.title, data: JSON.parse(canvas.dataset.values),
                     backgroundColor: ["#3b7dd8", "#b8c4d2"] }],
      },
      options: { animation: false, responsive: false, indexAxis: "y",
                 plugins: { title: { display: true, text: canvas.dataset.title }, legend: { display: false } } },
    });
  }
}

function startTail() {
  const table = document.querySelector("#tail tbody");
  if (!table) return;
  const state = document.getElementById("tail-state");
  let source = null;
  const value = (id) => document.getElementById(id).value.trim();
  function connect() {
    if (source) source.close();
    const params = new URLSearchParams({ event_type: value("f-type"), agent: value("f-agent") });
    source = new EventSource("/events/stream?" + params);
    source.onopen = () => { state.textContent = "live"; };
    source.onerror = () => { state.textContent = "reconnecting…"; };
    source.addEventListener("failed", (e) => { state.textContent = "refused: " + e.data; source.close(); });
    source.addEventListener("audit", (e) => {
      const item = JSON.parse(e.data);
      const aggregate = item.aggregate_type + "." + item.aggregate_id;
      if (!item.subject.startsWith(value("f-subject"))) return;
      if (value("f-aggregate") && aggregate !== value("f-aggregate")) return;
      const row = table.insertRow(0);
      row.className = "tail-row";
      for (const text of [item.sequence, item.subject, item.event_type, aggregate, item.producer, item.signing_key_id]) {
        row.insertCell().textContent = String(text);
      }
      const link = document.createElement("a");
      link.href = "/audit/proof/" + item.sequence;
      link.textContent = "proof";
      row.insertCell().appendChild(link);
      while (table.rows.length > 500) table.deleteRow(-1);
    });
  }
  document.getElementById("tail-apply").addEventListener("click", connect);
  connect();
}

document.addEventListener("DOMContentLoaded", () => { drawCharts(document); startTail(); });
document.addEventListener("htmx:afterSwap", (e) => drawCharts(e.target));

// The hosts page: queue depths and running tasks over time, sampled from /hosts/numbers.
function startLoadChart() {
  const canvas = document.getElementById("load-chart");
  if (!canvas) return;
  const series = ["critical", "high", "normal", "low", "running"];
  const chart = new Chart(canvas, {
    type: "line",
    data: { labels: [], datasets: series.map((name) => ({ label: name, data: [], tension: 0.2 })) },
    options: { animation: false, responsive: false, scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } },
  });
  async function sample() {
    const response = await fetch("/hosts/numbers");
    if (!response.ok) return;
    const numbers = await response.json();
    chart.data.labels.push(new Date().toLocaleTimeString());
    series.forEach((name, i) => {
      chart.data.datasets[i].data.push(name === "running" ? numbers.running : numbers.queues[name] || 0);
    });
    if (chart.data.labels.length > 200) {
      chart.data.labels.shift();
      chart.data.datasets.forEach((d) => d.data.shift());
    }
    chart.update();
  }
  sample();
  setInterval(sample, 3000);
}
document.addEventListener("DOMContentLoaded", startLoadChart);

// A task's page while it runs: its output and status arrive as Server-Sent Events from /tasks/{id}/stream.
// An output event at offset 0 carries the whole stream so far (a new connection starts there).
function startTaskStream() {
  const box = document.querySelector("#task-live[data-stream]");
  if (!box) return;
  const source = new EventSource(box.dataset.stream);
  const seen = () => { box.dataset.streamed = String(Number(box.dataset.streamed) + 1); };
  source.addEventListener("output", (e) => {
    const chunk = JSON.parse(e.data);
    const pre = document.getElementById(chunk.stream);
    pre.textContent = chunk.offset === 0 ? chunk.text : pre.textContent + chunk.text;
    if (chunk.stream === "stderr" && chunk.text) document.getElementById("stderr-box").hidden = false;
    seen();
  });
  source.addEventListener("status", (e) => {
    document.getElementById("task-state").innerHTML = JSON.parse(e.data);
    seen();
  });
  source.addEventListener("charts", (e) => {
    const charts = document.getElementById("task-charts");
    charts.innerHTML = JSON.parse(e.data);
    drawCharts(charts);
    seen();
  });
  source.addEventListener("done", () => {
    source.close();
    document.getElementById("output-state").textContent = "";
    box.removeAttribute("data-stream");
    seen();
  });
  source.addEventListener("failed", (e) => {
    source.close();
    document.getElementById("output-state").textContent = "(stream stopped: " + JSON.parse(e.data) + ")";
  });
}
document.addEventListener("DOMContentLoaded", startTaskStream);
