// pregon console: small enhancements over pages that work without script.
// - times in the reader's own time zone and language;
// - the language switch submits on change and comes back to the same page;
// - a campaign's page follows its progress live (values, actions, a chart) without reloading.
"use strict";

function localizeTimes(root) {
  const lang = document.documentElement.lang || "es";
  const format = new Intl.DateTimeFormat(lang, { dateStyle: "medium", timeStyle: "short" });
  for (const el of root.querySelectorAll("time[datetime]")) {
    const at = new Date(el.getAttribute("datetime"));
    if (!isNaN(at)) el.textContent = format.format(at);
  }
}

function languageSwitch() {
  for (const back of document.querySelectorAll("input[data-back]")) {
    back.value = location.pathname + location.search;
  }
  for (const select of document.querySelectorAll("select[data-autosubmit]")) {
    select.addEventListener("change", () => select.form.submit());
  }
}

function showActionsFor(state) {
  for (const el of document.querySelectorAll("[data-states]")) {
    el.hidden = !el.dataset.states.split(" ").includes(state);
  }
}

function liveCampaign(main) {
  const id = main.dataset.campaign;
  const samples = [];
  const chart = document.querySelector("#live-chart polyline");
  const bar = document.getElementById("progress-bar");
  function draw() {
    if (!chart || samples.length < 2) return;
    const t0 = samples[0].t, t1 = samples[samples.length - 1].t;
    const max = Math.max(1, ...samples.map(s => s.total));
    const points = samples.map(s => {
      const x = t1 === t0 ? 0 : ((s.t - t0) / (t1 - t0)) * 590 + 5;
      const y = 155 - (s.done / max) * 150;
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    chart.setAttribute("points", points.join(" "));
  }
  async function poll() {
    let values;
    try {
      const answer = await fetch("/console/campaigns/" + id + "/live", { credentials: "same-origin" });
      if (!answer.ok) return setTimeout(poll, 5000);
      values = await answer.json();
    } catch (_) {
      return setTimeout(poll, 5000);
    }
    for (const [key, value] of Object.entries(values)) {
      for (const el of document.querySelectorAll('[data-live="' + key + '"]')) el.textContent = value;
    }
    const badge = document.querySelector(".state[data-live=state_text]");
    if (badge) badge.className = "state " + values.state;
    main.dataset.state = values.state;
    if (bar) { bar.max = Math.max(1, values.total); bar.value = values.done; }
    showActionsFor(values.state);
    samples.push({ t: Date.now(), done: values.done, total: values.total });
    if (samples.length > 300) samples.shift();
    draw();
    if (!values.finished) setTimeout(poll, 2000);
  }
  if (main.dataset.state !== "draft") poll();
}

// The schedule's start is written in the reader's local time; the server needs the offset.
function timeZoneOffset() {
  for (const field of document.querySelectorAll("input[data-tz-offset]")) {
    if (!field.value) field.value = String(new Date().getTimezoneOffset());
  }
}

document.addEventListener("DOMContentLoaded", () => {
  localizeTimes(document);
  timeZoneOffset();
  languageSwitch();
  const main = document.querySelector("main[data-campaign]");
  if (main) liveCampaign(main);
});
