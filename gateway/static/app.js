/* o2chain live page: renders /api/status, kept live by server-sent events (/api/events) with
   polling of /api/status as the fallback. No framework, no external assets, no inline script
   (the gateway's Content-Security-Policy allows only this file). Every value from the gateway
   is written with textContent (never innerHTML), so device names cannot inject markup.
   Operators log in (session cookie, HttpOnly); alarm actions send the session's CSRF token in
   X-CSRF-Token and are recorded by the gateway under the logged-in user.
   Texts: every word the page shows is in one catalogue per language, /static/i18n/{lang}.json,
   looked up with t(KEY, {params}) (k(KEY) marks a key looked up later with tk); the
   language is the visitor's choice (remembered in localStorage) or the browser's
   (navigator.languages); numbers and times are formatted for it with Intl. The mechanism is
   lang.js (window.O2Lang), loaded before this file and shared with the region view. */
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
  const session = { user: null, role: null, csrf: null, login: false, canRead: true, canAct: false, shelveMaxS: {}, doc: null };

  // ------------------------------------------------------------------ language
  // The mechanism is lang.js, shared with the region view: catalogues, look-ups, Intl formats.
  const { t, k, tk, tParts, translateTree, label, ruleLabel, severityLabel, num, plain, clock, ago, duration } = window.O2Lang;

  /** Switch to `lang`: load its catalogue, set <html lang>, translate and redraw the page. */
  async function setLanguage(lang) {
    if (!(await window.O2Lang.use(lang, $("lang")))) return;
    translateTree($("tpl-alarm").content);
    // Cards and alarm rows hold texts of the old language: rebuild them from the last status.
    $("sites").replaceChildren();
    $("alarm-list").replaceChildren();
    $("shelved-list").replaceChildren();
    setMode(state.mode);
    if (session.doc) applySession(session.doc);
    else if (state.status) render(state.status);
    if (!state.status) setText($("gw-line"), t("conn.connecting"));
  }

  // ------------------------------------------------------------------ formatting
  function metres(value) {
    return typeof value === "number" && Number.isFinite(value) ? `${num(Math.round(value), 0)} m` : "—";
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
  // A bar filled to `share` (0..1, drawn up to 1) that screen readers read as a percentage.
  function meter(cls, label, share) {
    const bar = el("div", cls);
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-label", label);
    bar.setAttribute("aria-valuenow", String(Math.round(share * 100)));
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    const fill = el("span");
    fill.style.width = `${Math.min(100, share * 100).toFixed(1)}%`;
    bar.append(fill);
    return bar;
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
    if (typeof o2 !== "number") return { id: "none", label: t("reading.none") };
    const lim = site.limits || {};
    const deficient = threshold(dev, "room-o2-deficient") ?? DEFAULT_DEFICIENT_PCT;
    const lowEffect = threshold(dev, "room-o2-low-effect") ?? DEFAULT_LOW_EFFECT_PCT;
    const highWarn = threshold(dev, "room-o2-high-warn") ?? lim.o2_high_warn_pct ?? 27;
    const highAlarm = threshold(dev, "room-o2-high") ?? lim.o2_high_alarm_pct ?? 28;
    if (o2 < deficient) return { id: "deficient", label: t("band.deficient", { pct: deficient }) };
    if (o2 < lowEffect) return { id: "low", label: t("band.low", { pct: lowEffect }) };
    if (o2 < TARGET_LOW_PCT) return { id: "below", label: t("band.below") };
    if (o2 <= TARGET_HIGH_PCT) return { id: "target", label: t("band.target") };
    if (o2 <= highWarn) return { id: "above", label: t("band.above") };
    if (o2 <= highAlarm) return { id: "high-warn", label: t("band.high_warn", { pct: num(highWarn, 1) }) };
    return { id: "high-alarm", label: t("band.high_alarm", { pct: num(highAlarm, 1) }) };
  }
  /** Purity against the engine's purity rules of this device ("<" limits). */
  function purityClass(purity, dev) {
    if (typeof purity !== "number") return { id: "none", label: t("reading.none") };
    const lows = (dev.thresholds || []).filter((t) => t.field === "purity_pct" && t.op.startsWith("<"));
    const alarm = lows.filter((t) => t.severity !== "warning" && t.severity !== "info");
    const warn = lows.filter((t) => t.severity === "warning");
    const alarmAt = alarm.length ? Math.max(...alarm.map((t) => t.value)) : undefined;
    const warnAt = warn.length ? Math.max(...warn.map((t) => t.value)) : undefined;
    const fault = (dev.thresholds || []).find((t) => t.rule === "purity-sensor-fault");
    if (fault && purity > fault.value) return { id: "warn", label: t("purity.sensor_fault") };
    if (alarmAt !== undefined && purity < alarmAt) return { id: "alarm", label: t("purity.below", { pct: alarmAt }) };
    if (warnAt !== undefined && purity < warnAt) return { id: "warn", label: t("purity.below", { pct: warnAt }) };
    return { id: "ok", label: alarmAt !== undefined ? t("purity.limit", { pct: alarmAt }) : t("purity.ok") };
  }
  /** Freshness of a device's data relative to its reporting interval. */
  function quality(dev) {
    const age = liveAge(dev.age_s);
    if (age === null) return { id: "none", label: t("quality.none") };
    const interval = dev.interval_s || 10;
    const flags = [];
    if (value(dev, "clock_unset")) flags.push(t("quality.clock_unset"));
    if (value(dev, "baro_source") === "isa") flags.push(t("quality.isa"));
    if (age > 5 * interval) return { id: "stale", label: [t("quality.stale"), ...flags].join(" · ") };
    if (age > 2.5 * interval) return { id: "late", label: [t("quality.late"), ...flags].join(" · ") };
    return { id: "ok", label: [t("quality.fresh"), ...flags].join(" · ") };
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
      [k("fact.eq_alt"), "eq_alt_m", (v) => metres(v)],
      [k("fact.ppo2"), "ppo2_kpa", (v) => `${num(v, 2)} kPa`],
      [k("fact.baro"), "baro_kpa", (v) => `${num(v, 1)} kPa`],
      [k("fact.temp"), "temp_c", (v) => `${num(v, 1)} °C`],
      [k("fact.rh"), "rh_pct", (v) => `${num(v, 0)} %`],
      [k("fact.co2"), "co2_ppm", (v) => `${num(v, 0)} ppm`, true],
    ],
    producer: [
      [k("fact.flow"), "flow_lpm", (v) => `${num(v, 1)} L/min`],
      [k("fact.o2_out"), "o2_lpm", (v) => `${num(v, 2)} L/min`],
      [k("fact.outlet"), "outlet_kpa", (v) => `${num(v, 0)} kPa`, true],
      [k("fact.product_tank"), "tank_kpa", (v) => `${num(v, 0)} kPa`, true],
      [k("fact.dew_point"), "dew_point_c", (v) => `${num(v, 1)} °C`, true],
      [k("fact.run_hours"), "run_h", (v) => `${num(v, 0)} h`, true],
    ],
    supply: [
      [k("fact.pressure"), "pressure_kpa", (v) => `${num(v, 0)} kPa`],
      [k("fact.flow"), "flow_m3h", (v) => `${num(v, 2)} m³/h`],
      [k("fact.level"), "level_pct", (v) => `${num(v, 0)} %`],
    ],
  };
  const KINDS = { room: k("kind.room"), concentrator: k("kind.concentrator"), plant: k("kind.plant"), supply: k("kind.supply") };
  const LINKS = { online: k("link.online"), offline: k("link.offline"), unknown: k("link.unknown") };
  const ROLES = { viewer: k("role.viewer"), operator: k("role.operator"), admin: k("role.admin") };
  const kindLabel = (kind) => label(KINDS, kind);
  const linkLabel = (link) => label(LINKS, link);
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
      box.append(el("dt", "", tk(label)), dd);
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
    setText(n.title, dev.kind === "room" && room !== dev.id ? t("card.room", { room }) : dev.id);
    setText(n.kind, dev.kind === "room" ? `${dev.id} · ${dev.transport}` : `${kindLabel(dev.kind)} · ${dev.transport}`);
    card.dataset.link = dev.link;
    n.link.dataset.link = dev.link;
    setText(n.link, linkLabel(dev.link));
    n.link.setAttribute("aria-label", t("card.link_aria", { state: linkLabel(dev.link) }));
    const trendField = TREND[dev.kind];
    const main = value(dev, trendField);
    if (fam === "room") {
      const b = o2Band(main, dev, site);
      card.dataset.band = b.id;
      setText(n.big, "");
      n.big.append(num(main, 1), el("small", "", ` ${t("unit.o2_pct")}`));
      setText(n.band, b.label);
    } else if (fam === "producer") {
      const p = purityClass(main, dev);
      card.dataset.purity = p.id;
      const running = value(dev, "state");
      const stateText = running === true ? t("run.running") : running === false ? t("run.stopped") : "";
      setText(n.big, "");
      n.big.append(num(main, 1), el("small", "", ` ${t("unit.purity_pct")}`));
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
      n.svg.setAttribute("aria-label", t("trend.o2", { n: points.length }));
    } else if (fam === "producer") {
      const limit = (dev.thresholds || []).filter((t) => t.rule === "purity-low").map((t) => t.value)[0];
      // The limit is drawn when the trend comes near it; it does not flatten a healthy trend.
      sparkline(n.svg, points, { lines: [[limit, "limit-line"]] });
      n.svg.setAttribute("aria-label", t("trend.purity", { n: points.length }));
    } else {
      sparkline(n.svg, points, {});
      n.svg.setAttribute("aria-label", t("trend.pressure", { n: points.length }));
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
    setText(n.age, t("card.reading_age", { ago: ago(age) }));
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
    chain.setAttribute("aria-label", t("chain.aria"));
    const roomsTitle = el("h3", "group-title", t("group.rooms"));
    const rooms = el("div", "grid rooms");
    const equipTitle = el("h3", "group-title", t("group.production"));
    const equipment = el("div", "grid equipment");
    const supplyTitle = el("h3", "group-title", t("group.supply"));
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
      box.append(el("div", "muted", t("chain.waiting")));
      return;
    }
    const known = (key) => typeof chain[key] === "number" && Number.isFinite(chain[key]);
    const group = (v) => (typeof v === "number" && Number.isFinite(v) ? num(Math.round(v), 0) : "—");
    // Flows: whole litres from 100 L/min up, else one or two decimals.
    const lpm = (v) => (Math.abs(v) >= 100 ? group(v) : num(v, Math.abs(v) >= 10 ? 1 : 2));
    // Stock: litres of O2 at the site's conditions; cubic metres from 10,000 L up.
    const stock = (l) => (l >= 10000 ? [group(l / 1000), "m³ O₂"] : [group(l), "L O₂"]);
    const signed = (v) => (v > 0 ? "+" : v < 0 ? "−" : "") + lpm(Math.abs(v));
    const kv = (label, v, unit) => {
      const box2 = el("div", "kv");
      const vv = el("span", "v", v);
      if (unit) vv.append(el("small", "", ` ${unit}`));
      box2.append(el("span", "k", label), vv);
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
    flow.append(stage(t("chain.stage_produce"), "produce", kv(t("chain.produced"), lpm(produced), "L/min"),
      [t("chain.producers_reporting_n", { n: count("producers_reporting", "producers") })]));
    if (supply) {
      let storeKv, storeNotes = [];
      if ((chain.stores ?? 0) === 0) {
        storeKv = kv(t("chain.stored"), "—");
        storeNotes = [t("chain.no_stores")];
      } else if (known("stored_o2_l")) {
        const [v, unit] = stock(chain.stored_o2_l);
        storeKv = kv(t("chain.stored"), v, unit);
        if (known("stored_capacity_o2_l") && chain.stored_capacity_o2_l > 0) {
          const share = chain.stored_o2_l / chain.stored_capacity_o2_l;
          storeKv.append(meter("bar stock", t("chain.stock_aria"), share));
          storeNotes.push(t("chain.stock_share", { pct: num(share * 100, 0) }));
        }
        storeNotes.push(known("stored_change_o2_lpm")
          ? (chain.stored_change_o2_lpm < 0 ? t("chain.stock_out", { lpm: signed(chain.stored_change_o2_lpm) })
            : t("chain.stock_in", { lpm: signed(chain.stored_change_o2_lpm) }))
          : t("chain.stock_change_waiting"));
      } else {
        storeKv = kv(t("chain.stored"), "—");
        storeNotes = [t("chain.stock_incomplete")];
      }
      storeNotes.push(t("chain.stores_reporting_n", { n: count("stores_reporting", "stores") }));
      flow.append(arrow(), stage(t("chain.stage_store"), "store", storeKv, storeNotes));
      const metered = known("delivered_metered_o2_lpm");
      flow.append(arrow(), stage(t("chain.stage_deliver"), "deliver",
        kv(t("chain.delivered_metered"), metered ? lpm(chain.delivered_metered_o2_lpm) : "—", "L/min"),
        [(chain.meters ?? 0) > 0 ? t("chain.meters_reporting_n", { n: count("meters_reporting", "meters") })
          : t("chain.bedside_only"), t("chain.deliver_note")]));
    }
    flow.append(arrow(), stage(t("chain.stage_use"), "use",
      kv(t("chain.used"), chain.rooms_estimated ? lpm(delivered) : "—", "L/min"),
      [t("chain.rooms_reporting_n", { n: count("rooms_reporting", "rooms") }),
        chain.rooms_estimated ? t("chain.estimate_ventilation") : t("chain.needs_ventilation")]));
    box.append(el("h3", "", supply ? t("chain.title_supply") : t("chain.title")), flow);

    // Losses and days of oxygen left.
    if (supply) {
      const out = el("div", "chain-outcome");
      const loss = el("div", "outcome loss");
      if (known("loss_o2_lpm")) {
        const supplied = (chain.delivered_metered_o2_lpm ?? 0) + Math.max(0, chain.loss_o2_lpm);
        const share = supplied > 0 ? chain.loss_o2_lpm / supplied : 0;
        // A project choice for the colour only: above 5 % of the supply someone should look.
        loss.dataset.level = share > 0.05 ? "warning" : "ok";
        loss.append(kv(t("chain.losses"), lpm(chain.loss_o2_lpm), "L/min"), el("div", "stage-note", chain.loss_o2_lpm < 0
          ? t("chain.loss_negative")
          : t("chain.loss_share", { pct: num(share * 100, 1) })));
      } else {
        loss.dataset.level = "unknown";
        const missing = [];
        if ((chain.producers_reporting ?? 0) < (chain.producers ?? 0)) missing.push(t("chain.missing_producer"));
        if ((chain.stores_reporting ?? 0) < (chain.stores ?? 0)) missing.push(t("chain.missing_store"));
        if ((chain.meters_reporting ?? 0) < (chain.meters ?? 0)) missing.push(t("chain.missing_meter"));
        if (!(chain.meters > 0)) missing.push(t("chain.missing_meter_config"));
        if ((chain.stores ?? 0) > 0 && !known("stored_change_o2_lpm")) missing.push(t("chain.missing_trend"));
        loss.append(kv(t("chain.losses"), "—"), el("div", "stage-note",
          t("chain.loss_not_computed", { why: missing.length ? missing.join(t("list.sep")) : t("chain.loss_waiting") })));
      }
      const days = el("div", "outcome days");
      if (known("days_left")) {
        // The same limits as the supply devices' days-left alarms (gateway/supply_rules.py).
        days.dataset.level = chain.days_left < 1 ? "alarm" : chain.days_left < 3 ? "warning" : "ok";
        const running = chain.days_left < 365;
        days.append(kv(t("chain.days_left"), running ? num(chain.days_left, 1) : "365+", running ? t("chain.days_unit") : ""),
          el("div", "stage-note", running ? t("chain.days_note") : t("chain.days_not_running_down")));
      } else {
        days.dataset.level = "unknown";
        days.append(kv(t("chain.days_left"), "—"), el("div", "stage-note",
          (chain.stores ?? 0) > 0 ? t("chain.days_waiting") : t("chain.no_stores_configured")));
      }
      out.append(loss, days);
      box.append(out);
    }

    // The balance against the rooms' estimate, as before.
    const row = el("div", "chain-row");
    row.append(
      kv(t("chain.balance"), chain.rooms_estimated ? lpm(chain.balance_o2_lpm) : "—", "L/min"),
      kv(t("chain.produced_total"), num(chain.produced_o2_l, chain.produced_o2_l < 100 ? 1 : 0), "L O₂"),
    );
    box.append(row);
    if (chain.rooms_estimated && produced > 0) {
      const share = delivered / produced;
      const bar = meter(share > 1 ? "bar over" : "bar", t("chain.share_aria"), share);
      box.append(bar, el("div", "muted", t("chain.share", { pct: num(share * 100, 0) })));
    } else {
      box.append(el("div", "muted", t("chain.no_estimate")));
    }
    if (!supply) {
      const hint = el("div", "muted");
      hint.append(...tParts("chain.supply_hint", { kind: el("code", "", 'kind = "supply"') }));
      box.append(hint);
    }
  }

  function renderSite(sec, site) {
    const n = sec._n;
    setText(n.title, site.name || site.id);
    setText(n.meta, `${site.id} · ${metres(site.altitude_m)} · ${t("site.isa", { kpa: num(site.isa_baro_kpa, 1) })}`);
    const lim = site.limits || {};
    n.limits.replaceChildren(
      limitChip(t("limit.target"), `${plain(TARGET_LOW_PCT)}–${plain(TARGET_HIGH_PCT)} %`),
      limitChip(t("limit.high_warn"), `${num(lim.o2_high_warn_pct, 1)} %`),
      limitChip(t("limit.high_alarm"), `${num(lim.o2_high_alarm_pct, 1)} %`),
      limitChip(t("limit.nfpa"), `${num(lim.o2_nfpa_burn_pct, 1)} %`),
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
        showActionError(t("act.need_reason"));
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
    setText(li.querySelector(".sev"), severityLabel(a.severity));
    setText(li.querySelector(".alarm-device"), `${a.site} / ${a.device}`);
    const rule = li.querySelector(".alarm-rule");
    setText(rule, ruleLabel(a.rule));
    rule.title = a.key; // what `o2chain alarms ack` takes
    const st = a.shelved ? t("state.shelved") : a.acked ? t("state.acknowledged") : t("state.unacknowledged");
    setText(li.querySelector(".alarm-state"), st);
    setText(li.querySelector(".alarm-msg"), a.message || "");
    const now = state.status ? state.status.gateway.now_ms : Date.now();
    const since = (now - (a.raised_ms || now)) / 1000 + (Date.now() - state.receivedAt) / 1000;
    const parts = [t("meta.raised", { ago: ago(since) })];
    if (a.acked) parts.push(a.acked_by ? t("meta.acked_by", { user: a.acked_by }) : t("meta.acked"));
    if (a.shelved && a.shelved_until_ms) {
      const left = duration((a.shelved_until_ms - now) / 1000);
      parts.push(a.shelved_by ? t("meta.shelved_by", { user: a.shelved_by, left }) : t("meta.shelved", { left }));
    }
    setText(li.querySelector(".alarm-meta"), parts.join(" · "));
    const what = { rule: a.rule, device: a.device };
    li.querySelector(".alarm-actions").hidden = !session.canAct;
    const ack = li.querySelector(".btn-ack");
    ack.hidden = !!a.acked;
    ack.setAttribute("aria-label", t("aria.ack", what));
    li.querySelector(".btn-shelve").hidden = !!a.shelved;
    li.querySelector(".btn-shelve").setAttribute("aria-label", t("aria.shelve", what));
    li.querySelector(".shelve-for").hidden = !!a.shelved;
    const durations = li.querySelector(".shelve-duration");
    durations.setAttribute("aria-label", t("aria.shelve_for", what));
    // The gateway caps shelving by severity ([alarm_engine] shelve_max_s): offer what it takes.
    const cap = session.shelveMaxS[a.severity] ?? Infinity;
    for (const opt of durations.options) opt.hidden = opt.disabled = Number(opt.value) > cap;
    if (durations.selectedOptions[0] && durations.selectedOptions[0].disabled) {
      const allowed = [...durations.options].filter((o) => !o.disabled);
      if (allowed.length) durations.value = allowed[allowed.length - 1].value;
    }
    li.querySelector(".shelve-why").hidden = !!a.shelved;
    li.querySelector(".shelve-reason").setAttribute("aria-label", t("aria.reason", what));
    const un = li.querySelector(".btn-unshelve");
    un.hidden = !a.shelved;
    un.setAttribute("aria-label", t("aria.unshelve", what));
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
    $("alarm-count").setAttribute("aria-label", t("alarms.count_aria", { active: open.length, unacked }));
    document.querySelector(".alarms").dataset.unacked = String(unacked > 0);
    setText($("alarm-summary"), open.length ? t("alarms.unacked", { n: unacked }) : "");
    $("no-alarms").hidden = open.length > 0;
    $("shelved-box").hidden = shelved.length === 0;
    setText($("shelved-count"), String(shelved.length));
    document.title = unacked ? `(${unacked}) ${t("page.title")}` : t("page.title");
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
      const verb = { ack: k("act.verb_ack"), shelve: k("act.verb_shelve"), unshelve: k("act.verb_unshelve") }[action];
      showActionError(t("act.failed", { verb: tk(verb), rule: a.rule, device: a.device, error: err.message }));
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  }

  // ------------------------------------------------------------------ page
  function renderHeader(doc) {
    const gw = doc.gateway;
    const parts = [t("gw.id", { id: gw.id }), t("gw.up", { for: duration(gw.uptime_s) }),
      gw.mqtt_connected ? t("gw.mqtt_up") : t("gw.mqtt_down"),
      t("gw.outbox", { n: gw.outbox.depth }), t("gw.updated", { time: clock(gw.now_ms) })];
    // Messages the broker dropped at its queue limits (shown once it has dropped any).
    if (gw.broker_dropped) parts.splice(3, 0, t("gw.broker_dropped", { n: gw.broker_dropped }));
    setText($("gw-line"), parts.join(" · "));
    const h = $("health");
    h.hidden = false;
    h.dataset.ok = String(gw.health.ok);
    setText(h, gw.health.ok ? t("health.ok") : t("health.bad"));
    h.title = [...gw.health.reasons, ...gw.health.warnings].join("\n") || t("health.no_problems");
  }

  function renderUnknown(doc) {
    const list = doc.unknown_devices || [];
    $("unknown").hidden = list.length === 0;
    const ul = $("unknown-list");
    ul.replaceChildren(...list.map((u) => el("li", "", `${u.key} · ${linkLabel(u.state)}`)));
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
    const MODES = { live: k("conn.live"), polling: k("conn.polling"), offline: k("conn.offline"), connecting: k("conn.connecting"), login: k("conn.login") };
    setText(c, tk(MODES[mode]));
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
    session.doc = doc;
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
    setText($("who-role"), doc.role ? label(ROLES, doc.role) : "");
    $("login-hint").hidden = session.canRead;
    const hint = $("act-hint");
    hint.hidden = session.canAct;
    if (!doc.login) {
      setText(hint, t("act.hint_no_users"));
    } else if (doc.user) {
      setText(hint, t("act.hint_role", { user: doc.user, role: label(ROLES, doc.role) }));
    } else {
      setText(hint, t("act.hint_login"));
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
      setText(msg, t("login.failed", { error: err.message }));
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
    $("lang").addEventListener("change", () => {
      const lang = $("lang").value;
      window.O2Lang.remember(lang);
      setLanguage(lang);
    });
    state.receivedAt = Date.now();
    // The texts first: nothing is drawn before the catalogue is there.
    setLanguage(window.O2Lang.pick($("lang"))).finally(() => loadSession()).finally(() => {
      startLive();
      setInterval(tick, 1000);
    });
  }

  init();
})();
