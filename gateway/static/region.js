/* The region view: every facility with its worst alarm and chain balance, one facility in
   detail (#site). Polls /api/region every 5 s; all text is set with textContent. */
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const POLL_MS = 5000;

  function age(s) {
    if (s === null || s === undefined) return "never";
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    return Math.round(s / 3600) + " h ago";
  }
  function num(v) {
    return typeof v === "number" ? v.toFixed(1) : "–";
  }
  function link(b) {
    return b === true ? "up" : b === false ? "down" : "unknown";
  }
  function selected() {
    return decodeURIComponent(location.hash.replace(/^#/, ""));
  }

  function renderRows(doc) {
    const body = $("fac-rows");
    const tpl = $("tpl-row");
    body.replaceChildren();
    for (const f of doc.facilities) {
      const row = tpl.content.firstElementChild.cloneNode(true);
      const a = row.querySelector(".fac-link");
      a.textContent = f.site;
      a.href = "#" + encodeURIComponent(f.site);
      const sev = row.querySelector(".sev");
      sev.textContent = f.worst || "none";
      sev.dataset.severity = f.worst || "none";
      row.querySelector(".fac-alarms").textContent = String(f.alarms);
      const ls = row.querySelector(".fac-link-state");
      ls.textContent = link(f.bridge);
      ls.dataset.ok = String(f.bridge !== false);
      row.querySelector(".fac-offline").textContent = String(f.boards_offline);
      row.querySelector(".fac-balance").textContent = num(f.balance_o2_lpm);
      row.querySelector(".fac-age").textContent = age(f.last_reading_age_s);
      row.dataset.selected = String(f.site === selected());
      body.appendChild(row);
    }
    $("fac-count").textContent = String(doc.facilities.length);
    const bad = doc.facilities.filter((f) => f.worst === "alarm" || f.worst === "critical");
    $("region-line").textContent =
      doc.facilities.length + " facilities, " + bad.length + " with alarms";
    $("broker").dataset.ok = String(doc.broker.connected);
    $("broker").textContent = doc.broker.connected ? "broker" : "broker down";
    const dbOk = doc.database.ok_age_s !== null && !doc.database.error;
    $("database").dataset.ok = String(dbOk);
    $("database").textContent = dbOk ? "database" : "database down";
  }

  function renderDetail(doc) {
    $("detail").hidden = false;
    $("detail-title").textContent = doc.site;
    $("detail-chain").textContent =
      "O2 produced " + num(doc.produced_o2_lpm) + " L/min, delivered " +
      num(doc.delivered_o2_lpm) + " L/min, balance " + num(doc.balance_o2_lpm) +
      " L/min; link " + link(doc.bridge) + "; last reading " + age(doc.last_reading_age_s);
    const list = $("detail-alarms");
    const tpl = $("tpl-alarm");
    list.replaceChildren();
    for (const a of doc.active) {
      const li = tpl.content.firstElementChild.cloneNode(true);
      li.dataset.severity = a.severity;
      li.dataset.acked = String(!!a.acked);
      li.querySelector(".sev").textContent = a.severity;
      li.querySelector(".alarm-device").textContent = a.device;
      li.querySelector(".alarm-rule").textContent = a.rule;
      li.querySelector(".alarm-state").textContent =
        a.shelved ? "shelved" : a.acked ? "acknowledged" : "unacknowledged";
      li.querySelector(".alarm-msg").textContent = a.message || "";
      list.appendChild(li);
    }
    $("detail-none").hidden = doc.active.length > 0;
    $("detail-offline").textContent = doc.offline_boards.length
      ? "Boards offline: " + doc.offline_boards.join(", ")
      : "";
  }

  async function refresh() {
    try {
      const r = await fetch("/api/region", { cache: "no-store" });
      renderRows(await r.json());
      const site = selected();
      if (site) {
        const d = await fetch("/api/region/" + encodeURIComponent(site), { cache: "no-store" });
        if (d.ok) renderDetail(await d.json());
        else $("detail").hidden = true;
      } else {
        $("detail").hidden = true;
      }
    } catch (e) {
      $("region-line").textContent = "no answer from the region view";
    }
  }

  $("detail-close").addEventListener("click", (ev) => {
    ev.preventDefault();
    history.replaceState(null, "", location.pathname);
    refresh();
  });
  window.addEventListener("hashchange", refresh);
  refresh();
  setInterval(refresh, POLL_MS);
})();
