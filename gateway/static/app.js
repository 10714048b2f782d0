/* o2chain live page: renders /api/status, kept live by server-sent events (/api/events) with
   polling of /api/status as the fallback. No framework, no external assets, no inline script
   (the gateway's Content-Security-Policy allows only this file). Every value from the gateway
   is written with textContent (never innerHTML), so device names cannot inject markup.
   Operators log in (session cookie, HttpOnly); alarm actions send the session's CSRF token in
   X-CSRF-Token and are recorded by the gateway under the logged-in user. */
"use strict";

(() => {
  // docs/domain.md "Limits and alarms": room target band. The alarm limits come from the gateway (site limits
  // and the alarm engine's per-device thresholds in /api/status); these are fallbacks only.
  const TARGET_LOW_PCT = 24.0;
  const TARGET_HIGH_PCT = 26.0;
  const DEFAULT_DEFICIENT_PCT = 19.5;
  const DEFAULT_LOW_EFFECT_PCT = 22.0;
  const HISTORY_POINTS = 180;
  const POLL_AFTER_MS = 4000; // no event for this long: poll /api/status
  const SSE_RETRY_MS = 15000; // after the stream was refused (503) or closed
  const TREND = { room: "o2_pct", concentrator: "purity_pct", plant: "purity_pct", supply: "pressure_kpa" };
  const SVG_NS = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  const state = {
    status: null, // last /api/status document
    receivedAt: 0, // Date.now() when it arrived
    history: new Map(), // "site/device" -> Map(field -> [[ts, v], ...])
    mode: "connecting",
    lastEventAt: 0,
    polling: false,
    source: null,
    startedAt: Date.now(),
  };
  // What /api/session says: who is logged in and what they may do.
  const session = { user: null, role: null, csrf: null, login: false, canRead: true, canAct: false, shelveMaxS: {} };

  // ------------------------------------------------------------------ formatting
  function num(value, digits) {
    return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "—";
  }
  function metres(value) {
    return typeof value === "number" && Number.isFinite(value)
      ? Math.round(value).toLocaleString("en-US") + " m" : "—";
  }
  function ago(seconds) {
    if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "never";
    const s = Math.max(0, seconds);
    if (s < 60) return `${Math.floor(s)} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }
  function duration(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }
  /** Seconds since the gateway measured `ageAtSnapshot`, advanced by the local clock. */
  function liveAge(ageAtSnapshot) {
    if (ageAtSnapshot === null || ageAtSnapshot === undefined) return null;
    return ageAtSnapshot + (Date.now() - state.receivedAt) / 1000;
  }
  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }
  function value(dev, field) {
    const v = dev.values && dev.values[field];
    return v ? v.value : undefined;
  }

  // ------------------------------------------------------------------ classification
  function threshold(dev, ruleId) {
    const t = (dev.thresholds || []).find((r) => r.rule === ruleId);
    return t ? t.value : undefined;
  }
  /** O2 band of a room reading (docs/domain.md "Limits and alarms"), limits from the gateway. */
  function o2Band(o2, dev, site) {
    if (typeof o2 !== "number") return { id: "none", label: "no reading" };
    const lim = site.limits || {};
    const deficient = threshold(dev, "room-o2-deficient") ?? DEFAULT_DEFICIENT_PCT;
    const lowEffect = threshold(dev, "room-o2-low-effect") ?? DEFAULT_LOW_EFFECT_PCT;
    const highWarn = threshold(dev, "room-o2-high-warn") ?? lim.o2_high_warn_pct ?? 27;
    const highAlarm = threshold(dev, "room-o2-high") ?? lim.o2_high_alarm_pct ?? 28;
    if (o2 < deficient) return { id: "deficient", label: `deficient < ${deficient} %` };
    if (o2 < lowEffect) return { id: "low", label: `low effect < ${lowEffect} %` };
    if (o2 < TARGET_LOW_PCT) return { id: "below", label: "below target" };
    if (o2 <= TARGET_HIGH_PCT) return { id: "target", label: "target band" };
    if (o2 <= highWarn) return { id: "above", label: "above target" };
    if (o2 <= highAlarm) return { id: "high-warn", label: `high > ${num(highWarn, 1)} %` };
    return { id: "high-alarm", label: `fire risk > ${num(highAlarm, 1)} %` };
  }
  /** Purity against the engine's purity rules of this device ("<" limits). */
  function purityClass(purity, dev) {
    if (typeof purity !== "number") return { id: "none", label: "no reading" };
    const lows = (dev.thresholds || []).filter((t) => t.field === "purity_pct" && t.op.startsWith("<"));
    const alarm = lows.filter((t) => t.severity !== "warning" && t.severity !== "info");
    const warn = lows.filter((t) => t.severity === "warning");
    const alarmAt = alarm.length ? Math.max(...alarm.map((t) => t.value)) : undefined;
    const warnAt = warn.length ? Math.max(...warn.map((t) => t.value)) : undefined;
    const fault = (dev.thresholds || []).find((t) => t.rule === "purity-sensor-fault");
    if (fault && purity > fault.value) return { id: "warn", label: "sensor fault?" };
    if (alarmAt !== undefined && purity < alarmAt) return { id: "alarm", label: `below ${alarmAt} %` };
    if (warnAt !== undefined && purity < warnAt) return { id: "warn", label: `below ${warnAt} %` };
    return { id: "ok", label: alarmAt !== undefined ? `limit ${alarmAt} %` : "ok" };
  }
  /** Freshness of a device's data relative to its reporting interval. */
  function quality(dev) {
    const age = liveAge(dev.age_s);
    if (age === null) return { id: "none", label: "no data yet" };
    const interval = dev.interval_s || 10;
    const flags = [];
    if (value(dev, "clock_unset")) flags.push("clock unset");
    if (value(dev, "baro_source") === "isa") flags.push("ISA pressure");
    if (age > 5 * interval) return { id: "stale", label: ["stale", ...flags].join(" · ") };
    if (age > 2.5 * interval) return { id: "late", label: ["late", ...flags].join(" · ") };
    return { id: "ok", label: ["fresh", ...flags].join(" · ") };
  }
  function worstSeverity(alarms) {
    const rank = { info: 0, warning: 1, alarm: 2, critical: 3 };
    let worst = "";
    for (const a of alarms || []) {
      if (a.shelved) continue;
      if (!worst || rank[a.severity] > rank[worst]) worst = a.severity;
    }
    return worst;
  }

  // ------------------------------------------------------------------ history (sparklines)
  function remember(key, field, ts, v) {
    if (typeof v !== "number" || typeof ts !== "number") return;
    let fields = state.history.get(key);
    if (!fields) state.history.set(key, (fields = new Map()));
    let series = fields.get(field);
    if (!series) fields.set(field, (series = []));
    if (series.length && ts <= series[series.length - 1][0]) return;
    series.push([ts, v]);
    if (series.length > HISTORY_POINTS) series.splice(0, series.length - HISTORY_POINTS);
  }
  function mergeHistory(doc) {
    for (const [key, fields] of Object.entries(doc.devices || {})) {
      for (const [field, points] of Object.entries(fields)) {
        for (const [ts, v] of points) remember(key, field, ts, v);
      }
    }
  }
  async function loadHistory() {
    try {
      const res = await fetch("/api/history", { cache: "no-store" });
      if (res.ok) mergeHistory(await res.json());
    } catch (_) { /* sparklines then start from the live values */ }
  }

  function sparkline(svg, points, opts) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    if (points.length < 2) return;
    const ts = points.map((p) => p[0]);
    const vs = points.map((p) => p[1]);
    let lo = Math.min(...vs, ...(opts.include || []));
    let hi = Math.max(...vs, ...(opts.include || []));
    const pad = Math.max((hi - lo) * 0.08, 0.05);
    lo -= pad; hi += pad;
    const t0 = ts[0], t1 = ts[ts.length - 1] || t0 + 1;
    const x = (t) => ((t - t0) / Math.max(1, t1 - t0)) * 100;
    const y = (v) => 40 - ((v - lo) / (hi - lo)) * 40;
    if (opts.band) {
      const r = document.createElementNS(SVG_NS, "rect");
      const top = y(Math.min(hi, opts.band[1])), bottom = y(Math.max(lo, opts.band[0]));
      if (bottom > top) {
        r.setAttribute("x", "0"); r.setAttribute("width", "100");
        r.setAttribute("y", top.toFixed(2)); r.setAttribute("height", (bottom - top).toFixed(2));
        r.setAttribute("class", "target");
        svg.appendChild(r);
      }
    }
    for (const [level, cls] of opts.lines || []) {
      if (level === undefined || level < lo || level > hi) continue;
      const l = document.createElementNS(SVG_NS, "line");
      l.setAttribute("x1", "0"); l.setAttribute("x2", "100");
      l.setAttribute("y1", y(level).toFixed(2)); l.setAttribute("y2", y(level).toFixed(2));
      l.setAttribute("class", cls);
      svg.appendChild(l);
    }
    const line = document.createElementNS(SVG_NS, "polyline");
    line.setAttribute("points", points.map((p) => `${x(p[0]).toFixed(2)},${y(p[1]).toFixed(2)}`).join(" "));
    line.setAttribute("class", "line");
    svg.appendChild(line);
  }

  // ------------------------------------------------------------------ device cards
  const FACTS = {
    room: [
      ["Eq. altitude", "eq_alt_m", (v) => metres(v)],
      ["ppO₂", "ppo2_kpa", (v) => `${num(v, 2)} kPa`],
      ["Pressure", "baro_kpa", (v) => `${num(v, 1)} kPa`],
      ["Temperature", "temp_c", (v) => `${num(v, 1)} °C`],
      ["Humidity", "rh_pct", (v) => `${num(v, 0)} %`],
      ["CO₂", "co2_ppm", (v) => `${num(v, 0)} ppm`, true],
    ],
    producer: [
      ["Flow", "flow_lpm", (v) => `${num(v, 1)} L/min`],
      ["O₂ out", "o2_lpm", (v) => `${num(v, 2)} L/min`],
      ["Outlet", "outlet_kpa", (v) => `${num(v, 0)} kPa`, true],
      ["Tank", "tank_kpa", (v) => `${num(v, 0)} kPa`, true],
      ["Dew point", "dew_point_c", (v) => `${num(v, 1)} °C`, true],
      ["Run hours", "run_h", (v) => `${num(v, 0)} h`, true],
    ],
    supply: [
      ["Pressure", "pressure_kpa", (v) => `${num(v, 0)} kPa`],
      ["Flow", "flow_m3h", (v) => `${num(v, 2)} m³/h`],
      ["Level", "level_pct", (v) => `${num(v, 0)} %`],
    ],
  };
  function family(kind) {
    return kind === "room" ? "room" : kind === "supply" ? "supply" : "producer";
  }

  function makeCard(dev) {
    const card = el("article", "card");
    card.dataset.device = dev.id;
    card.dataset.kind = dev.kind;
    const head = el("div", "card-head");
    const titleBox = el("div");
    const title = el("h3", "card-title");
    const kind = el("div", "card-kind");
    titleBox.append(title, kind);
    const link = el("span", "link");
    head.append(titleBox, link);
    const main = el("div", "main-value");
    const big = el("div", "big");
    big.dataset.field = TREND[dev.kind] || "";
    const band = el("span", "band");
    main.append(big, band);
    const facts = el("dl", "facts");
    const factNodes = {};
    for (const [label, field, , optional] of FACTS[family(dev.kind)]) {
      const box = el("div");
      const dd = el("dd");
      dd.dataset.field = field;
      box.append(el("dt", "", label), dd);
      if (optional) box.hidden = true;
      facts.append(box);
      factNodes[field] = dd;
    }
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("viewBox", "0 0 100 40");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    const foot = el("div", "card-foot");
    const age = el("span", "age");
    const qual = el("span", "quality");
    foot.append(age, qual);
    card.append(head, main, facts, svg, foot);
    card._n = { title, kind, link, big, band, factNodes, svg, age, qual };
    return card;
  }

  function updateCard(card, dev, site) {
    const n = card._n;
    const key = `${site.id}/${dev.id}`;
    const fam = family(dev.kind);
    // The room tag defaults to the device id ("room-101"): say "Room" only before a bare name.
    const room = dev.room || dev.id;
    setText(n.title, dev.kind === "room" && room !== dev.id ? `Room ${room}` : dev.id);
    setText(n.kind, dev.kind === "room" ? `${dev.id} · ${dev.transport}` : `${dev.kind} · ${dev.transport}`);
    card.dataset.link = dev.link;
    n.link.dataset.link = dev.link;
    setText(n.link, dev.link);
    n.link.setAttribute("aria-label", `link ${dev.link}`);
    const trendField = TREND[dev.kind];
    const main = value(dev, trendField);
    if (fam === "room") {
      const b = o2Band(main, dev, site);
      card.dataset.band = b.id;
      setText(n.big, "");
      n.big.append(num(main, 1), el("small", "", " % O₂"));
      setText(n.band, b.label);
    } else if (fam === "producer") {
      const p = purityClass(main, dev);
      card.dataset.purity = p.id;
      const running = value(dev, "state");
      const stateText = running === true ? "running" : running === false ? "stopped" : "";
      setText(n.big, "");
      n.big.append(num(main, 1), el("small", "", " % purity"));
      setText(n.band, [stateText, p.label].filter(Boolean).join(" · "));
    } else {
      setText(n.big, "");
      n.big.append(num(main, 0), el("small", "", " kPa"));
      setText(n.band, "");
      n.band.hidden = true;
    }
    for (const [, field, fmt, optional] of FACTS[fam]) {
      const v = value(dev, field);
      const node = n.factNodes[field];
      setText(node, fmt(v));
      if (optional) node.parentElement.hidden = v === undefined;
    }
    card.dataset.alarm = worstSeverity(dev.alarms);
    // Sparkline: the trend field, with the target band or the alarm limit drawn.
    for (const [field, v] of Object.entries(dev.values || {})) remember(key, field, v.ts_ms, v.value);
    const points = (state.history.get(key) || new Map()).get(trendField) || [];
    if (fam === "room") {
      const lim = site.limits || {};
      sparkline(n.svg, points, {
        band: [TARGET_LOW_PCT, TARGET_HIGH_PCT], include: [TARGET_LOW_PCT, TARGET_HIGH_PCT],
        lines: [[threshold(dev, "room-o2-high-warn") ?? lim.o2_high_warn_pct, "warn-line"],
                [threshold(dev, "room-o2-high") ?? lim.o2_high_alarm_pct, "limit-line"]],
      });
      n.svg.setAttribute("aria-label", `O2 trend, last ${points.length} readings`);
    } else if (fam === "producer") {
      const limit = (dev.thresholds || []).filter((t) => t.rule === "purity-low").map((t) => t.value)[0];
      // The limit is drawn when the trend comes near it; it does not flatten a healthy trend.
      sparkline(n.svg, points, { lines: [[limit, "limit-line"]] });
      n.svg.setAttribute("aria-label", `purity trend, last ${points.length} readings`);
    } else {
      sparkline(n.svg, points, {});
      n.svg.setAttribute("aria-label", `pressure trend, last ${points.length} readings`);
    }
    updateAge(card, dev);
  }

  function updateAge(card, dev) {
    const n = card._n;
    const q = quality(dev);
    card.dataset.quality = q.id;
    n.qual.dataset.quality = q.id;
    setText(n.qual, q.label);
    const mainTs = dev.values && dev.values[TREND[dev.kind]];
    const age = mainTs ? liveAge(mainTs.age_s) : liveAge(dev.age_s);
    setText(n.age, `reading ${ago(age)}`);
  }

  // ------------------------------------------------------------------ sites
  function makeSite(site) {
    const sec = el("section", "site");
    sec.dataset.site = site.id;
    const head = el("div", "site-head");
    const title = el("h2");
    const meta = el("span", "muted");
    const limits = el("div", "limits");
    head.append(title, meta, limits);
    const chain = el("div", "chain");
    chain.setAttribute("aria-label", "oxygen chain balance");
    const roomsTitle = el("h3", "group-title", "Rooms");
    const rooms = el("div", "grid rooms");
    const equipTitle = el("h3", "group-title", "Oxygen production");
    const equipment = el("div", "grid equipment");
    const supplyTitle = el("h3", "group-title", "Supply");
    const supply = el("div", "grid supply");
    sec.append(head, chain, roomsTitle, rooms, equipTitle, equipment, supplyTitle, supply);
    sec._n = { title, meta, limits, chain, rooms, equipment, supply, roomsTitle, equipTitle, supplyTitle };
    return sec;
  }

  function limitChip(label, v) {
    const chip = el("span", "limit", `${label} `);
    chip.append(el("b", "", v));
    return chip;
  }

  function renderChain(box, chain, site) {
    box.replaceChildren();
    if (!chain) {
      box.append(el("div", "muted", "Oxygen chain: waiting for the first balance point (every [enrich] chain_interval_s)."));
      return;
    }
    const has = (k) => typeof chain[k] === "number" && Number.isFinite(chain[k]);
    const group = (v) => (typeof v === "number" && Number.isFinite(v)
      ? Math.round(v).toLocaleString("en-US") : "—");
    // Flows: whole litres from 100 L/min up, else one or two decimals.
    const lpm = (v) => (Math.abs(v) >= 100 ? group(v) : num(v, Math.abs(v) >= 10 ? 1 : 2));
    // Stock: litres of O2 at the site's conditions; cubic metres from 10,000 L up.
    const stock = (l) => (l >= 10000 ? [group(l / 1000), "m³ O₂"] : [group(l), "L O₂"]);
    const signed = (v) => (v > 0 ? "+" : v < 0 ? "−" : "") + lpm(Math.abs(v));
    const kv = (k, v, unit) => {
      const box2 = el("div", "kv");
      const vv = el("span", "v", v);
      if (unit) vv.append(el("small", "", ` ${unit}`));
      box2.append(el("span", "k", k), vv);
      return box2;
    };
    const count = (a, b) => `${chain[a] ?? 0}/${chain[b] ?? 0}`;
    const produced = chain.produced_o2_lpm, delivered = chain.delivered_o2_lpm;
    // The middle of the chain shows once the site has supply devices with a stock or a meter.
    const supply = (chain.stores ?? 0) > 0 || (chain.meters ?? 0) > 0;

    // The chain's stages, left to right: produce -> store -> deliver -> use.
    const stage = (name, cls, valueKv, notes) => {
      const card = el("div", `stage ${cls}`);
      card.setAttribute("role", "group");
      card.setAttribute("aria-label", name);
      card.append(el("div", "stage-name", name), valueKv);
      for (const n of notes) if (n) card.append(el("div", "stage-note", n));
      return card;
    };
    const arrow = () => {
      const a = el("div", "stage-arrow", "→");
      a.setAttribute("aria-hidden", "true");
      return a;
    };
    const flow = el("div", "chain-flow");
    flow.append(stage("Produce", "produce", kv("O₂ produced", lpm(produced), "L/min"),
      [`${count("producers_reporting", "producers")} producers reporting`]));
    if (supply) {
      let storeKv, storeNotes = [];
      if ((chain.stores ?? 0) === 0) {
        storeKv = kv("O₂ stored", "—");
        storeNotes = ["no tanks or cylinder banks configured"];
      } else if (has("stored_o2_l")) {
        const [v, unit] = stock(chain.stored_o2_l);
        storeKv = kv("O₂ stored", v, unit);
        if (has("stored_capacity_o2_l") && chain.stored_capacity_o2_l > 0) {
          const share = chain.stored_o2_l / chain.stored_capacity_o2_l;
          const bar = el("div", "bar stock");
          bar.setAttribute("role", "meter");
          bar.setAttribute("aria-label", "stored oxygen, share of the usable capacity");
          bar.setAttribute("aria-valuenow", String(Math.round(share * 100)));
          bar.setAttribute("aria-valuemin", "0");
          bar.setAttribute("aria-valuemax", "100");
          const fill = el("span");
          fill.style.width = `${Math.min(100, share * 100).toFixed(1)}%`;
          bar.append(fill);
          storeKv.append(bar);
          storeNotes.push(`${num(share * 100, 0)} % of the usable capacity`);
        }
        storeNotes.push(has("stored_change_o2_lpm")
          ? `${signed(chain.stored_change_o2_lpm)} L/min ${chain.stored_change_o2_lpm < 0 ? "drawn from stock" : "into stock"}`
          : "change: waiting for the trend");
      } else {
        storeKv = kv("O₂ stored", "—");
        storeNotes = ["not every store reports its stock"];
      }
      storeNotes.push(`${count("stores_reporting", "stores")} stores reporting`);
      flow.append(arrow(), stage("Store", "store", storeKv, storeNotes));
      const metered = has("delivered_metered_o2_lpm");
      flow.append(arrow(), stage("Deliver", "deliver",
        kv("O₂ delivered (metered)", metered ? lpm(chain.delivered_metered_o2_lpm) : "—", "L/min"),
        [(chain.meters ?? 0) > 0 ? `${count("meters_reporting", "meters")} outlet meters reporting`
          : "bedside concentrators only", "pipeline meters and bedside units"]));
    }
    flow.append(arrow(), stage("Use", "use",
      kv("O₂ used by rooms", chain.rooms_estimated ? lpm(delivered) : "—", "L/min"),
      [`${count("rooms_reporting", "rooms")} rooms reporting`,
        chain.rooms_estimated ? "estimate from ventilation" : "needs ventilation_m3h per room"]));
    box.append(el("h3", "", supply ? "Oxygen chain: produce → store → deliver → use" : "Oxygen chain: produce → use"), flow);

    // Losses and days of oxygen left.
    if (supply) {
      const out = el("div", "chain-outcome");
      const loss = el("div", "outcome loss");
      if (has("loss_o2_lpm")) {
        const supplied = (chain.delivered_metered_o2_lpm ?? 0) + Math.max(0, chain.loss_o2_lpm);
        const share = supplied > 0 ? chain.loss_o2_lpm / supplied : 0;
        // A project choice for the colour only: above 5 % of the supply someone should look.
        loss.dataset.level = share > 0.05 ? "warning" : "ok";
        loss.append(kv("Losses", lpm(chain.loss_o2_lpm), "L/min"), el("div", "stage-note", chain.loss_o2_lpm < 0
          ? "below zero: within the error of the meters and stock gauges (produced − change in stock − delivered)"
          : `${num(share * 100, 1)} % of the oxygen supplied: leaks, venting, boil-off, unmetered use (produced − change in stock − delivered)`));
      } else {
        loss.dataset.level = "unknown";
        const missing = [];
        if ((chain.producers_reporting ?? 0) < (chain.producers ?? 0)) missing.push("a producer is silent");
        if ((chain.stores_reporting ?? 0) < (chain.stores ?? 0)) missing.push("a store is silent");
        if ((chain.meters_reporting ?? 0) < (chain.meters ?? 0)) missing.push("a meter is silent");
        if (!(chain.meters > 0)) missing.push("no pipeline meter configured");
        if ((chain.stores ?? 0) > 0 && !has("stored_change_o2_lpm")) missing.push("the stock trend needs more history");
        loss.append(kv("Losses", "—"), el("div", "stage-note",
          `not computed: ${missing.length ? missing.join(", ") : "waiting for every stage to report"}`));
      }
      const days = el("div", "outcome days");
      if (has("days_left")) {
        // The same limits as the supply devices' days-left alarms (gateway/supply_rules.py).
        days.dataset.level = chain.days_left < 1 ? "alarm" : chain.days_left < 3 ? "warning" : "ok";
        const running = chain.days_left < 365;
        days.append(kv("Days of oxygen left", running ? num(chain.days_left, 1) : "365+", running ? "days" : ""),
          el("div", "stage-note", running ? "the stores' stock over their net draw" : "the stores are not running down"));
      } else {
        days.dataset.level = "unknown";
        days.append(kv("Days of oxygen left", "—"), el("div", "stage-note",
          (chain.stores ?? 0) > 0 ? "waiting for the stores' forecast" : "no stores configured"));
      }
      out.append(loss, days);
      box.append(out);
    }

    // The balance against the rooms' estimate, as before.
    const row = el("div", "chain-row");
    row.append(
      kv("Balance (produced − used)", chain.rooms_estimated ? lpm(chain.balance_o2_lpm) : "—", "L/min"),
      kv("Produced total", num(chain.produced_o2_l, chain.produced_o2_l < 100 ? 1 : 0), "L O₂"),
    );
    box.append(row);
    if (chain.rooms_estimated && produced > 0) {
      const share = delivered / produced;
      const bar = el("div", share > 1 ? "bar over" : "bar");
      bar.setAttribute("role", "meter");
      bar.setAttribute("aria-label", "share of produced oxygen delivered to rooms");
      bar.setAttribute("aria-valuenow", String(Math.round(share * 100)));
      bar.setAttribute("aria-valuemin", "0");
      bar.setAttribute("aria-valuemax", "100");
      const fill = el("span");
      fill.style.width = `${Math.min(100, share * 100).toFixed(1)}%`;
      bar.append(fill);
      box.append(bar, el("div", "muted", `${num(share * 100, 0)} % of the produced oxygen goes to the rooms' enrichment (estimate from ventilation).`));
    } else {
      box.append(el("div", "muted", "Delivered oxygen is estimated for rooms with ventilation_m3h in the gateway config."));
    }
    if (!supply) {
      box.append(el("div", "muted", "Stock, metered delivery, losses and days of oxygen left show once supply devices (kind supply: tanks, manifolds, area alarm panels) are configured."));
    }
  }

  function renderSite(sec, site) {
    const n = sec._n;
    setText(n.title, site.name || site.id);
    setText(n.meta, `${site.id} · ${Math.round(site.altitude_m)} m · ISA ${num(site.isa_baro_kpa, 1)} kPa`);
    const lim = site.limits || {};
    n.limits.replaceChildren(
      limitChip("target", `${TARGET_LOW_PCT}–${TARGET_HIGH_PCT} %`),
      limitChip("high warning >", `${num(lim.o2_high_warn_pct, 1)} %`),
      limitChip("high alarm >", `${num(lim.o2_high_alarm_pct, 1)} %`),
      limitChip("NFPA burn rate", `${num(lim.o2_nfpa_burn_pct, 1)} %`),
    );
    renderChain(n.chain, site.chain, site);
    const groups = { room: n.rooms, producer: n.equipment, supply: n.supply };
    const seen = new Set();
    for (const dev of site.devices) {
      const grid = groups[family(dev.kind)];
      let card = grid.querySelector(`:scope > [data-device="${CSS.escape(dev.id)}"]`);
      if (!card) { card = makeCard(dev); grid.append(card); }
      updateCard(card, dev, site);
      seen.add(card);
    }
    for (const grid of Object.values(groups)) {
      for (const card of [...grid.children]) if (!seen.has(card)) card.remove();
    }
    n.roomsTitle.hidden = !n.rooms.children.length;
    n.equipTitle.hidden = !n.equipment.children.length;
    n.supplyTitle.hidden = !n.supply.children.length;
  }

  // ------------------------------------------------------------------ alarms
  function alarmRow(a) {
    const li = $("tpl-alarm").content.firstElementChild.cloneNode(true);
    li.querySelector(".btn-ack").addEventListener("click", () => act(li, "ack", {}));
    li.querySelector(".btn-shelve").addEventListener("click", () => {
      const reason = li.querySelector(".shelve-reason");
      if (!reason.value.trim()) {
        showActionError("Say why the alarm is shelved (reason), then shelve it.");
        reason.focus();
        return;
      }
      act(li, "shelve", { duration_s: Number(li.querySelector(".shelve-duration").value), reason: reason.value.trim() });
    });
    li.querySelector(".btn-unshelve").addEventListener("click", () => act(li, "unshelve", {}));
    return li;
  }
  function updateAlarmRow(li, a) {
    li._alarm = a;
    li.dataset.key = a.key;
    li.dataset.severity = a.severity;
    li.dataset.acked = String(!!a.acked);
    li.dataset.shelved = String(!!a.shelved);
    setText(li.querySelector(".sev"), a.severity);
    setText(li.querySelector(".alarm-device"), `${a.site} / ${a.device}`);
    setText(li.querySelector(".alarm-rule"), a.rule);
    const st = a.shelved ? "shelved" : a.acked ? "acknowledged" : "unacknowledged";
    setText(li.querySelector(".alarm-state"), st);
    setText(li.querySelector(".alarm-msg"), a.message || "");
    const now = state.status ? state.status.gateway.now_ms : Date.now();
    const since = (now - (a.raised_ms || now)) / 1000 + (Date.now() - state.receivedAt) / 1000;
    const parts = [`raised ${ago(since)}`];
    if (a.acked) parts.push(`acknowledged${a.acked_by ? " by " + a.acked_by : ""}`);
    if (a.shelved && a.shelved_until_ms) {
      parts.push(`shelved${a.shelved_by ? " by " + a.shelved_by : ""} for ${duration((a.shelved_until_ms - now) / 1000)} more`);
    }
    setText(li.querySelector(".alarm-meta"), parts.join(" · "));
    const what = `${a.rule} on ${a.device}`;
    li.querySelector(".alarm-actions").hidden = !session.canAct;
    const ack = li.querySelector(".btn-ack");
    ack.hidden = !!a.acked;
    ack.setAttribute("aria-label", `Acknowledge alarm ${what}`);
    li.querySelector(".btn-shelve").hidden = !!a.shelved;
    li.querySelector(".btn-shelve").setAttribute("aria-label", `Shelve alarm ${what}`);
    li.querySelector(".shelve-for").hidden = !!a.shelved;
    const durations = li.querySelector(".shelve-duration");
    durations.setAttribute("aria-label", `Shelve ${what} for`);
    // The gateway caps shelving by severity ([alarm_engine] shelve_max_s): offer what it takes.
    const cap = session.shelveMaxS[a.severity] ?? Infinity;
    for (const opt of durations.options) opt.hidden = opt.disabled = Number(opt.value) > cap;
    if (durations.selectedOptions[0] && durations.selectedOptions[0].disabled) {
      const allowed = [...durations.options].filter((o) => !o.disabled);
      if (allowed.length) durations.value = allowed[allowed.length - 1].value;
    }
    li.querySelector(".shelve-why").hidden = !!a.shelved;
    li.querySelector(".shelve-reason").setAttribute("aria-label", `Reason to shelve ${what}`);
    const un = li.querySelector(".btn-unshelve");
    un.hidden = !a.shelved;
    un.setAttribute("aria-label", `Unshelve alarm ${what}`);
  }
  function syncList(list, alarms) {
    const existing = new Map([...list.children].map((li) => [li.dataset.key, li]));
    let prev = null;
    for (const a of alarms) {
      let li = existing.get(a.key);
      if (!li) li = alarmRow(a);
      existing.delete(a.key);
      updateAlarmRow(li, a);
      const want = prev ? prev.nextSibling : list.firstChild;
      if (li !== want) list.insertBefore(li, want);
      prev = li;
    }
    for (const li of existing.values()) li.remove();
  }
  // A notification links to `#alarm/{site}/{device}/{rule}`: mark that alarm and bring it
  // into view once, so the person who was called finds it (and its Acknowledge button) at once.
  let linkedShown = "";
  function linkedKey() {
    const m = /^#alarm\/([a-z0-9-]+)\/([a-z0-9-]+)\/([a-z0-9-]+)$/.exec(location.hash);
    return m ? `${m[1]}/${m[2]}/${m[3]}` : "";
  }
  function markLinked() {
    const key = linkedKey();
    for (const li of document.querySelectorAll(".alarm-list > li")) {
      li.dataset.linked = String(key !== "" && li.dataset.key === key);
      if (key && li.dataset.key === key && linkedShown !== key) {
        linkedShown = key;
        li.scrollIntoView({ block: "center" });
      }
    }
  }
  window.addEventListener("hashchange", () => {
    linkedShown = "";
    markLinked();
  });
  function renderAlarms(doc) {
    const all = doc.alarms || [];
    const open = all.filter((a) => !a.shelved);
    const shelved = all.filter((a) => a.shelved);
    syncList($("alarm-list"), open);
    syncList($("shelved-list"), shelved);
    markLinked();
    const unacked = open.filter((a) => !a.acked).length;
    setText($("alarm-count"), String(open.length));
    $("alarm-count").setAttribute("aria-label", `${open.length} active, ${unacked} unacknowledged`);
    document.querySelector(".alarms").dataset.unacked = String(unacked > 0);
    setText($("alarm-summary"), open.length ? `${unacked} unacknowledged` : "");
    $("no-alarms").hidden = open.length > 0;
    $("shelved-box").hidden = shelved.length === 0;
    setText($("shelved-count"), String(shelved.length));
    document.title = unacked ? `(${unacked}) o2chain live` : "o2chain live";
  }

  function showActionError(text) {
    const msg = $("action-msg");
    msg.hidden = false;
    setText(msg, text);
  }

  async function act(li, action, extra) {
    const a = li._alarm;
    const url = `/api/alarms/${encodeURIComponent(a.site)}/${encodeURIComponent(a.device)}/${encodeURIComponent(a.rule)}/${action}`;
    const buttons = li.querySelectorAll("button");
    buttons.forEach((b) => (b.disabled = true));
    const msg = $("action-msg");
    try {
      const res = await fetch(url, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": session.csrf || "" },
        body: JSON.stringify(extra),
      });
      const body = await res.json().catch(() => ({}));
      if (res.status === 401) loadSession(); // the session ended: show the login form again
      if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
      msg.hidden = true;
      const reason = li.querySelector(".shelve-reason");
      if (action === "shelve") reason.value = "";
      if (state.status && body.alarm) {
        // Show the result at once; the next event brings the gateway's full picture.
        state.status.alarms = state.status.alarms.map((x) => (x.key === body.alarm.key ? body.alarm : x));
        for (const site of state.status.sites) {
          for (const dev of site.devices) {
            dev.alarms = (dev.alarms || []).map((x) => (x.key === body.alarm.key ? body.alarm : x));
          }
        }
        render(state.status);
      }
    } catch (err) {
      showActionError(`Could not ${action} ${a.rule} on ${a.device}: ${err.message}`);
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  }

  // ------------------------------------------------------------------ page
  function renderHeader(doc) {
    const gw = doc.gateway;
    const parts = [`gateway ${gw.id}`, `up ${duration(gw.uptime_s)}`,
      gw.mqtt_connected ? "MQTT connected" : "MQTT disconnected",
      `outbox ${gw.outbox.depth}`, `updated ${new Date(gw.now_ms).toLocaleTimeString()}`];
    setText($("gw-line"), parts.join(" · "));
    const h = $("health");
    h.hidden = false;
    h.dataset.ok = String(gw.health.ok);
    setText(h, gw.health.ok ? "healthy" : "unhealthy");
    h.title = [...gw.health.reasons, ...gw.health.warnings].join("\n") || "no problems";
  }

  function renderUnknown(doc) {
    const list = doc.unknown_devices || [];
    $("unknown").hidden = list.length === 0;
    const ul = $("unknown-list");
    ul.replaceChildren(...list.map((u) => el("li", "", `${u.key} · ${u.state}`)));
  }

  function render(doc) {
    renderHeader(doc);
    renderAlarms(doc);
    renderUnknown(doc);
    const root = $("sites");
    const seen = new Set();
    for (const site of doc.sites) {
      let sec = root.querySelector(`:scope > [data-site="${CSS.escape(site.id)}"]`);
      if (!sec) { sec = makeSite(site); root.append(sec); }
      renderSite(sec, site);
      seen.add(sec);
    }
    for (const sec of [...root.children]) if (!seen.has(sec)) sec.remove();
  }

  function apply(doc) {
    state.status = doc;
    state.receivedAt = Date.now();
    render(doc);
  }

  function setMode(mode) {
    state.mode = mode;
    const c = $("conn");
    c.dataset.mode = mode;
    setText(c, { live: "live", polling: "polling", offline: "gateway unreachable", connecting: "connecting", login: "log in to see data" }[mode]);
  }

  function connect() {
    if (!("EventSource" in window) || !session.canRead || state.source) return; // the watchdog polls instead
    const es = new EventSource("/api/events");
    state.source = es;
    // Too many live streams: the gateway dropped this one (oldest first). Poll for a while.
    es.addEventListener("evicted", () => {
      es.close();
      state.source = null;
      setMode("polling");
      setTimeout(connect, SSE_RETRY_MS);
    });
    es.addEventListener("status", (ev) => {
      state.lastEventAt = Date.now();
      setMode("live");
      apply(JSON.parse(ev.data));
    });
    es.addEventListener("error", () => {
      if (es.readyState === EventSource.CLOSED) { // refused (e.g. 401: logged out)
        if (state.source === es) state.source = null;
        setTimeout(connect, SSE_RETRY_MS);
      }
    });
  }

  async function poll() {
    if (state.polling || !session.canRead) return;
    state.polling = true;
    try {
      const res = await fetch("/api/status", { cache: "no-store" });
      if (res.status === 401) { // reading needs a login here (not on loopback), or it ended
        await loadSession();
        return;
      }
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const doc = await res.json();
      const quiet = (t) => Date.now() - t > POLL_AFTER_MS;
      if (!state.source || (quiet(state.lastEventAt) && quiet(state.startedAt))) setMode("polling");
      apply(doc);
    } catch (_) {
      setMode("offline");
    } finally {
      state.polling = false;
    }
  }

  function tick() {
    // Fallback: no event for a while (no EventSource, proxy buffering, stream refused).
    if (session.canRead && Date.now() - Math.max(state.lastEventAt, state.receivedAt) > POLL_AFTER_MS) poll();
    // Ages move on between updates.
    if (!state.status) return;
    for (const site of state.status.sites) {
      const sec = document.querySelector(`[data-site="${CSS.escape(site.id)}"]`);
      if (!sec) continue;
      for (const dev of site.devices) {
        const card = sec.querySelector(`[data-device="${CSS.escape(dev.id)}"]`);
        if (card) updateAge(card, dev);
      }
    }
  }

  // ------------------------------------------------------------------ login
  function applySession(doc) {
    session.user = doc.user;
    session.role = doc.role;
    session.csrf = doc.csrf;
    session.login = !!doc.login;
    session.canRead = !!doc.can_read;
    session.canAct = !!doc.can_act;
    session.shelveMaxS = doc.shelve_max_s || {};
    $("login-form").hidden = !!doc.user || !doc.login;
    $("who").hidden = !doc.user;
    setText($("who-name"), doc.user || "");
    setText($("who-role"), doc.role || "");
    $("login-hint").hidden = session.canRead;
    const hint = $("act-hint");
    hint.hidden = session.canAct;
    if (!doc.login) {
      setText(hint, "Alarm actions need operator accounts: the gateway has no [http] users_file.");
    } else if (doc.user) {
      setText(hint, `${doc.user} is a ${doc.role}: acknowledging and shelving need an operator.`);
    } else {
      setText(hint, "Log in as an operator to acknowledge or shelve alarms; every action is recorded under your name.");
    }
    if (!session.canRead) {
      setMode("login");
      if (state.source) { state.source.close(); state.source = null; }
    }
    if (state.status) render(state.status); // the action buttons follow the role
  }

  async function loadSession() {
    try {
      const res = await fetch("/api/session", { cache: "no-store" });
      if (res.ok) applySession(await res.json());
    } catch (_) { /* the watchdog shows the gateway unreachable */ }
  }

  function startLive() {
    if (!session.canRead) return;
    loadHistory().finally(() => {
      connect();
      poll();
    });
  }

  async function login(ev) {
    ev.preventDefault(); // sent as JSON below; the form's own POST would be refused (415)
    const msg = $("login-msg");
    const button = $("login-form").querySelector("button");
    button.disabled = true;
    try {
      const res = await fetch("/api/login", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ name: $("login-name").value.trim(), password: $("login-password").value }),
      });
      const body = await res.json().catch(() => ({}));
      if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
      $("login-password").value = "";
      msg.hidden = true;
      const couldRead = session.canRead;
      applySession(body);
      if (!couldRead) startLive();
    } catch (err) {
      msg.hidden = false;
      setText(msg, `Login failed: ${err.message}`);
    } finally {
      button.disabled = false;
    }
  }

  async function logout() {
    try {
      await fetch("/api/logout", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": session.csrf || "" },
        body: "{}",
      });
    } catch (_) { /* the session expires on the gateway anyway */ }
    await loadSession();
    if (!session.canRead) location.reload(); // no data left on the screen of a logged-out page
  }

  function init() {
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", logout);
    state.receivedAt = Date.now();
    loadSession().finally(() => {
      startLive();
      setInterval(tick, 1000);
    });
  }

  init();
})();
