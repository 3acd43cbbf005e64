// The operator dashboard: asks for a token once, fetches the figures with it and draws them.
// Every value from the server is written with textContent, never as HTML: dead-letter reasons
// and descriptions carry text that came from outside (ACS errors), and the token sits in this tab.
"use strict";

(() => {
  const TOKEN_KEY = "notify.dashboard.token";
  const DATA_URL = "/api/admin/dashboard/data";
  const DEAD_LETTERS_URL = "/api/admin/dead-letters";
  const DEAD_LETTERS_SHOWN = 20;
  const REFRESH_MS = 60000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const CHANNELS = { email: "Email", sms: "SMS" };
  const SERIES = [
    ["sent", "Sent"],
    ["delivered", "Delivered"],
    ["bounced", "Bounced"],
    ["failed", "Failed"],
    ["deadLettered", "Dead-lettered"],
  ];
  const TOTALS = [
    ["accepted", "Accepted"],
    ["sent", "Sent"],
    ["delivered", "Delivered"],
    ["bounced", "Bounced"],
    ["failed", "Failed"],
    ["suppressed", "Suppressed"],
    ["deadLettered", "Dead-lettered"],
    ["awaitingReport", "Awaiting report"],
    ["unconfirmed", "Unconfirmed"],
    ["pending", "Pending"],
  ];

  const $ = (id) => document.getElementById(id);
  let timer = null;
  let loading = 0; // a newer load wins over an older one still in flight

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    node.append(...children);
    return node;
  }

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const percent = (rate) => `${(rate * 100).toFixed(2)} %`;
  const utc = (iso) => new Date(iso).toISOString().slice(0, 16).replace("T", " ");
  const hourLabel = (iso) => new Date(iso).toISOString().slice(11, 16);

  function setStatus(text) {
    $("status").textContent = text;
  }

  class HttpError extends Error {
    constructor(status) {
      super(`HTTP ${status}`);
      this.status = status;
    }
  }

  async function getJson(url, token) {
    const response = await fetch(url, {
      headers: { Authorization: `Bearer ${token}`, Accept: "application/json" },
      cache: "no-store",
    });
    if (!response.ok) throw new HttpError(response.status);
    return response.json();
  }

  // ------------------------------------------------------------------ signing in and out

  function showSignIn(message) {
    clearInterval(timer);
    timer = null;
    // Nothing fetched with an earlier token stays on screen.
    $("dashboard").hidden = true;
    for (const id of ["rates", "channels"]) $(id).replaceChildren();
    $("totals").querySelector("tbody").replaceChildren();
    $("dead-letters").querySelector("tbody").replaceChildren();
    $("sign-in").hidden = false;
    setStatus(message);
  }

  function signIn(event) {
    event.preventDefault();
    const token = $("token").value.trim();
    $("token").value = "";
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    load();
  }

  function signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    showSignIn("Signed out. Sign in with an operator key or token to see the figures.");
  }

  // ------------------------------------------------------------------ loading

  async function load() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) {
      showSignIn("Sign in with an operator key or token to see the figures.");
      return;
    }
    const mine = ++loading;
    const hours = $("hours").value;
    setStatus("Loading…");
    let figures;
    try {
      figures = await getJson(`${DATA_URL}?hours=${encodeURIComponent(hours)}`, token);
    } catch (error) {
      if (mine !== loading) return;
      if (error.status === 401 || error.status === 403) {
        sessionStorage.removeItem(TOKEN_KEY);
        showSignIn(
          error.status === 401
            ? "That key or token was not accepted (401). Sign in again."
            : "That key or token does not have the operator role (403)."
        );
      } else {
        setStatus(`Could not load the figures (${error.message}); the page will try again.`);
        // The refresh starts after the first success; a first load that fails must retry too.
        if (timer === null) timer = setInterval(load, REFRESH_MS);
      }
      return;
    }
    if (mine !== loading) return;
    $("sign-in").hidden = true;
    $("dashboard").hidden = false;
    render(figures);
    setStatus(`Showing notifications accepted ${utc(figures.from)} to ${utc(figures.to)} UTC.`);
    if (timer === null) timer = setInterval(load, REFRESH_MS);
    loadDeadLetters(token, mine);
  }

  async function loadDeadLetters(token, mine) {
    const state = $("dead-state");
    const table = $("dead-letters");
    state.textContent = "Loading dead letters…";
    let body;
    try {
      body = await getJson(`${DEAD_LETTERS_URL}?limit=${DEAD_LETTERS_SHOWN}`, token);
    } catch (error) {
      if (mine !== loading) return;
      table.hidden = true;
      table.querySelector("tbody").replaceChildren();
      state.textContent = `Dead letters unavailable (${error.status ? error.message : "network error"}).`;
      return;
    }
    if (mine !== loading) return;
    const rows = body.deadLetters || [];
    table.querySelector("tbody").replaceChildren(
      ...rows.map((d) =>
        el(
          "tr",
          {},
          el("td", { text: d.deadLetteredAt ? `${utc(d.deadLetteredAt)} UTC` : "" }),
          el("td", { text: CHANNELS[d.channel] || d.channel || "" }),
          el("td", { text: d.reason || "" }),
          el("td", { text: d.description || "" }),
          el("td", { text: d.notificationId || "" }),
          el("td", { text: d.source || "" }),
          el("td", { text: String(d.replayCount ?? 0) })
        )
      )
    );
    table.hidden = rows.length === 0;
    state.textContent = rows.length ? `The ${rows.length} newest, newest first.` : "No dead letters.";
  }

  // ------------------------------------------------------------------ drawing

  function render(figures) {
    $("generated").textContent = `Updated ${utc(figures.generatedAt)} UTC`;
    renderRates(figures.failureRate);
    renderTotals(figures);
    $("channels").replaceChildren(
      ...Object.entries(figures.channels).map(([channel, data]) => renderChannel(channel, data, figures.hours))
    );
  }

  function renderRates(rate) {
    $("rate-window").textContent =
      `Bounced, failed and suppressed over sent, for notifications accepted in the last ${rate.windowMinutes} minutes ` +
      `(judged from ${rate.minSent} sends): the figure the reconciler alerts on.`;
    $("rates").replaceChildren(
      ...Object.entries(rate.channels).map(([channel, r]) => {
        const level = {
          ok: "OK: below the warning threshold",
          warning: "Warning: at or above the warning threshold",
          critical: "Critical: at or above the critical threshold",
          "too-few-sends": `Not judged: fewer than ${rate.minSent} sent`,
        }[r.level];
        return el(
          "article",
          { class: `card level-${r.level}`, "aria-label": `${CHANNELS[channel] || channel} failure rate` },
          el("h3", { text: CHANNELS[channel] || channel }),
          el("p", { class: "rate", text: percent(r.rate) }),
          el("p", { class: "level", text: level }),
          el("p", { text: `${r.failures} ${r.failures === 1 ? "failure" : "failures"} of ${r.sent} sent` }),
          el("p", { class: "thresholds", text: `Warning at ${percent(rate.warning)}, critical at ${percent(rate.critical)}` }),
          gauge(r.rate, rate.warning, rate.critical)
        );
      })
    );
  }

  // A bar from 0 to two and a half times the critical threshold, both thresholds marked; a rate
  // beyond that fills the bar (the number above it says how far).
  function gauge(value, warning, critical) {
    const width = 260;
    const height = 34;
    const top = critical * 2.5;
    const x = (v) => Math.min(width, (v / top) * width);
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "gauge", "aria-hidden": "true" });
    chart.append(
      svg("rect", { x: 0, y: 4, width, height: 12, class: "gauge-track" }),
      svg("rect", { x: 0, y: 4, width: x(value), height: 12, class: "gauge-value" }),
      svg("line", { x1: x(warning), x2: x(warning), y1: 0, y2: 20, class: "gauge-warning" }),
      svg("line", { x1: x(critical), x2: x(critical), y1: 0, y2: 20, class: "gauge-critical" }),
      svg("text", { x: x(warning) - 2, y: 31, "text-anchor": "end" }, percent(warning)),
      svg("text", { x: x(critical) + 2, y: 31, "text-anchor": "start" }, percent(critical))
    );
    return chart;
  }

  function renderTotals(figures) {
    const table = $("totals");
    $("totals-caption").textContent = `Notifications accepted ${utc(figures.from)} to ${utc(figures.to)} UTC, by status now`;
    table.querySelector("thead").replaceChildren(
      el("tr", {}, el("th", { scope: "col", text: "Channel" }), ...TOTALS.map(([, label]) => el("th", { scope: "col", text: label })),
        el("th", { scope: "col", text: "Failure rate" }))
    );
    table.querySelector("tbody").replaceChildren(
      ...Object.entries(figures.channels).map(([channel, data]) =>
        el(
          "tr",
          { "data-channel": channel },
          el("th", { scope: "row", text: CHANNELS[channel] || channel }),
          ...TOTALS.map(([key]) => el("td", { text: String(data.totals[key]) })),
          el("td", { text: percent(data.totals.failureRate) })
        )
      )
    );
  }

  function renderChannel(channel, data, hours) {
    const name = CHANNELS[channel] || channel;
    const table = el(
      "table",
      { class: "hourly", "data-channel": channel },
      el("caption", { text: `${name}: notifications accepted per hour (UTC)` }),
      el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Hour (UTC)" }),
        ...SERIES.map(([, label]) => el("th", { scope: "col", text: label })))),
      el(
        "tbody",
        {},
        ...hours.map((hour, i) =>
          el("tr", {}, el("th", { scope: "row", text: utc(hour) }), ...SERIES.map(([key]) => el("td", { text: String(data.series[key][i]) })))
        )
      )
    );
    return el(
      "section",
      { class: "channel", "aria-label": `${name} per hour` },
      el("h3", { text: name }),
      lineChart(name, data.series, hours),
      legend(),
      el("div", { class: "table-scroll" }, table)
    );
  }

  function legend() {
    return el("ul", { class: "legend" }, ...SERIES.map(([key, label]) => el("li", { class: `series-${key}`, text: label })));
  }

  function lineChart(name, series, hours) {
    const width = 640;
    const height = 200;
    const pad = { left: 40, right: 24, top: 10, bottom: 24 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const peak = Math.max(1, ...SERIES.flatMap(([key]) => series[key]));
    const x = (i) => pad.left + (hours.length === 1 ? plotW / 2 : (i / (hours.length - 1)) * plotW);
    const y = (v) => pad.top + plotH - (v / peak) * plotH;
    const chart = svg("svg", {
      viewBox: `0 0 ${width} ${height}`,
      class: "chart",
      role: "img",
      "aria-label": `${name}: ${SERIES.map(([, label]) => label.toLowerCase()).join(", ")} per hour; the table below has the numbers`,
    });
    for (const v of [0, Math.round(peak / 2), peak]) {
      chart.append(
        svg("line", { x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v), class: "grid" }),
        svg("text", { x: pad.left - 6, y: y(v) + 4, "text-anchor": "end", class: "axis" }, String(v))
      );
    }
    const every = Math.ceil(hours.length / 8);
    hours.forEach((hour, i) => {
      if (i % every === 0 || i === hours.length - 1) {
        chart.append(svg("text", { x: x(i), y: height - 6, "text-anchor": "middle", class: "axis" }, hourLabel(hour)));
      }
    });
    for (const [key, label] of SERIES) {
      const points = series[key].map((v, i) => `${x(i)},${y(v)}`).join(" ");
      chart.append(svg("polyline", { points, class: `line series-${key}` }));
      series[key].forEach((v, i) => {
        const dot = svg("circle", { cx: x(i), cy: y(v), r: 2.5, class: `dot series-${key}` });
        dot.append(svg("title", {}, `${label}, ${utc(hours[i])} UTC: ${v}`));
        chart.append(dot);
      });
    }
    return chart;
  }

  // ------------------------------------------------------------------ start

  document.addEventListener("DOMContentLoaded", () => {
    $("sign-in").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", signOut);
    $("refresh").addEventListener("click", load);
    $("hours").addEventListener("change", load);
    load();
  });
})();
