/* The region view: every facility with its worst alarm and chain balance, one facility in
   detail (#site). Polls /api/region every 5 s; all text is set with textContent.
   Texts: the live page's catalogues and mechanism (lang.js, loaded before this file): the
   words are the region.* keys and shared ones; numbers and ages are formatted for the
   language with Intl; the language menu switches at once and is remembered. */
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const POLL_MS = 5000;
  const { t, k, tk, label, ruleLabel, severityLabel, num, ago } = window.O2Lang;
  const LINKS = { true: k("region.link_up"), false: k("region.link_down") };
  const ALARM_STATES = {
    shelved: k("state.shelved"), acked: k("state.acknowledged"), unacked: k("state.unacknowledged"),
  };
  let last = null; // { overview, detail } as last drawn, redrawn in a new language

  function litres(v) {
    return t("region.lpm", { v: num(v, 1) });
  }
  function link(b) {
    return b === true || b === false ? label(LINKS, String(b)) : t("link.unknown");
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
      row.dataset.site = f.site;
      const a = row.querySelector(".fac-link");
      a.textContent = f.site;
      a.href = "#" + encodeURIComponent(f.site);
      const sev = row.querySelector(".sev");
      sev.textContent = f.worst ? severityLabel(f.worst) : t("region.worst_none");
      sev.dataset.severity = f.worst || "none";
      row.querySelector(".fac-alarms").textContent = num(f.alarms, 0);
      const ls = row.querySelector(".fac-link-state");
      ls.textContent = link(f.bridge);
      ls.dataset.ok = String(f.bridge !== false);
      row.querySelector(".fac-offline").textContent = num(f.boards_offline, 0);
      row.querySelector(".fac-balance").textContent = num(f.balance_o2_lpm, 1);
      row.querySelector(".fac-age").textContent = ago(f.last_reading_age_s);
      row.dataset.selected = String(f.site === selected());
      body.appendChild(row);
    }
    $("fac-count").textContent = num(doc.facilities.length, 0);
    $("fac-none").hidden = doc.facilities.length > 0;
    const bad = doc.facilities.filter((f) => f.worst === "alarm" || f.worst === "critical");
    $("region-line").textContent =
      t("region.summary", { n: doc.facilities.length, alarms: bad.length });
    $("broker").dataset.ok = String(doc.broker.connected);
    $("broker").textContent = doc.broker.connected ? t("region.broker_up") : t("region.broker_down");
    const dbOk = doc.database.ok_age_s !== null && !doc.database.error;
    $("database").dataset.ok = String(dbOk);
    $("database").textContent = dbOk ? t("region.database_up") : t("region.database_down");
  }

  function renderDetail(doc) {
    $("detail").hidden = false;
    $("detail-title").textContent = doc.site;
    $("detail-chain").textContent = t("region.chain", {
      produced: litres(doc.produced_o2_lpm),
      delivered: litres(doc.delivered_o2_lpm),
      balance: litres(doc.balance_o2_lpm),
      link: link(doc.bridge),
      ago: ago(doc.last_reading_age_s),
    });
    const list = $("detail-alarms");
    const tpl = $("tpl-alarm");
    list.replaceChildren();
    for (const a of doc.active) {
      const li = tpl.content.firstElementChild.cloneNode(true);
      li.dataset.severity = a.severity;
      li.dataset.acked = String(!!a.acked);
      li.dataset.key = a.key;
      li.querySelector(".sev").textContent = severityLabel(a.severity);
      li.querySelector(".alarm-device").textContent = a.device;
      const rule = li.querySelector(".alarm-rule");
      rule.textContent = ruleLabel(a.rule);
      rule.title = a.rule; // the id, as `o2chain alarms` takes it
      li.querySelector(".alarm-state").textContent =
        tk(ALARM_STATES[a.shelved ? "shelved" : a.acked ? "acked" : "unacked"]);
      li.querySelector(".alarm-msg").textContent = a.message || "";
      list.appendChild(li);
    }
    $("detail-none").hidden = doc.active.length > 0;
    $("detail-offline").textContent = doc.offline_boards.length
      ? t("region.offline_boards", { boards: doc.offline_boards.join(t("list.sep")) })
      : "";
  }

  function draw() {
    if (!last) return;
    renderRows(last.overview);
    if (last.detail) renderDetail(last.detail);
    else $("detail").hidden = true;
  }

  async function refresh() {
    try {
      const r = await fetch("/api/region", { cache: "no-store" });
      const overview = await r.json();
      let detail = null;
      const site = selected();
      if (site) {
        const d = await fetch("/api/region/" + encodeURIComponent(site), { cache: "no-store" });
        if (d.ok) detail = await d.json();
      }
      last = { overview, detail };
      draw();
    } catch (e) {
      $("region-line").textContent = t("region.no_answer");
    }
  }

  /** Switch to `lang`: the catalogue, <html lang>, the page's fixed texts, then the data. */
  async function setLanguage(lang) {
    if (!(await window.O2Lang.use(lang, $("lang")))) return;
    if (last) draw();
    else $("region-line").textContent = t("conn.connecting");
  }

  $("detail-close").addEventListener("click", (ev) => {
    ev.preventDefault();
    history.replaceState(null, "", location.pathname);
    refresh();
  });
  $("lang").addEventListener("change", () => {
    const lang = $("lang").value;
    window.O2Lang.remember(lang);
    setLanguage(lang);
  });
  window.addEventListener("hashchange", refresh);
  // The texts first: nothing is drawn before the catalogue is there.
  setLanguage(window.O2Lang.pick($("lang"))).finally(() => {
    refresh();
    setInterval(refresh, POLL_MS);
  });
})();
