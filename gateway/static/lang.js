/* The pages' languages, one mechanism for the live page (app.js) and the region view
   (region.js): every word a page shows is in one catalogue per language,
   /static/i18n/{lang}.json (the two pages share the catalogues; the region view's own texts are
   the region.* keys), looked up with t(KEY, {params}) (k(KEY) marks a key looked up later with
   tk). The language is the visitor's choice from the page's #lang menu (remembered in
   localStorage under o2chain.lang, which the browser keeps per address: scheme, host and
   port) or the browser's (navigator.languages); numbers and times are formatted for it with
   Intl. Loaded before the page's own script; it exposes window.O2Lang and draws nothing. */
"use strict";

window.O2Lang = (() => {
  const STORAGE_KEY = "o2chain.lang";
  const FALLBACK = "en";
  const i18n = { lang: FALLBACK, texts: {}, formats: new Map() };

  /** The languages the page has: one <option> of its menu per catalogue in static/i18n/. */
  function languages(menu) {
    return [...menu.options].map((o) => o.value);
  }
  /** The visitor's earlier choice, else the first of the browser's languages the page has
      (by exact tag, then by language: "zh-TW" or "zh" get zh-CN), else English. */
  function pick(menu) {
    const have = languages(menu);
    let stored = null;
    try { stored = localStorage.getItem(STORAGE_KEY); } catch (_) { /* storage off */ }
    if (stored && have.includes(stored)) return stored;
    const wanted = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || ""];
    for (const tag of wanted) {
      const exact = have.find((l) => l.toLowerCase() === tag.toLowerCase());
      if (exact) return exact;
      const primary = tag.split("-")[0].toLowerCase();
      const same = have.find((l) => l.split("-")[0].toLowerCase() === primary);
      if (same) return same;
    }
    return FALLBACK;
  }
  /** Keep the visitor's choice for the next visit (this visit only when storage is off). */
  function remember(lang) {
    try { localStorage.setItem(STORAGE_KEY, lang); } catch (_) { /* storage off: this visit only */ }
  }
  async function loadCatalogue(lang) {
    const res = await fetch(`/static/i18n/${lang}.json`, { cache: "no-store" });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    return res.json();
  }
  /** Switch to `lang` (English when its catalogue cannot be had): load the catalogue, set
      <html lang> and the menu, translate the document's data-i18n elements. False when no
      catalogue could be loaded at all; the page then redraws its own texts. */
  async function use(lang, menu) {
    let texts;
    try {
      texts = await loadCatalogue(lang);
    } catch (err) {
      console.error(`o2chain: no texts for ${lang} (${err.message})`);
      if (lang === FALLBACK) return false;
      return use(FALLBACK, menu);
    }
    i18n.lang = lang;
    i18n.texts = texts;
    i18n.formats.clear();
    document.documentElement.lang = lang;
    menu.value = lang;
    translateTree(document);
    return true;
  }

  /** The text of `key`, its {name} placeholders filled from `params` (numbers formatted for
      the language). A missing key shows as the key itself and is reported on the console. */
  function t(key, params) {
    return tParts(key, params).map((p) => (typeof p === "string" ? p : p.textContent)).join("");
  }
  /** Marks a key that is looked up later with tk() (tables of labels). */
  function k(key) {
    return key;
  }
  function tk(key, params) {
    return t(key, params);
  }
  function has(key) {
    return typeof i18n.texts[key] === "string";
  }
  /** Like t(), but as a list of strings and the DOM nodes given as params (for markup such as
      <code> inside a sentence, without innerHTML). */
  function tParts(key, params) {
    let text = i18n.texts[key];
    if (typeof text !== "string") {
      console.error(`o2chain: no text "${key}" in ${i18n.lang}.json`);
      text = key;
    }
    if (!params) return [text];
    return text.split(/\{(\w+)\}/).map((piece, i) => {
      if (i % 2 === 0) return piece;
      if (!(piece in params)) return `{${piece}}`;
      const v = params[piece];
      return v instanceof Node ? v : typeof v === "number" ? plain(v) : String(v);
    }).filter((p) => p !== "");
  }
  /** Fill elements marked data-i18n(-placeholder|-aria-label|-title) under `root`. */
  function translateTree(root) {
    for (const node of root.querySelectorAll("[data-i18n]")) {
      if (!node._args) {
        node._args = {};
        for (const child of node.querySelectorAll(":scope > [data-i18n-arg]")) node._args[child.dataset.i18nArg] = child;
      }
      const args = node.dataset.i18nArgs ? JSON.parse(node.dataset.i18nArgs) : {};
      node.replaceChildren(...tParts(node.dataset.i18n, { ...args, ...node._args }));
    }
    for (const attr of ["placeholder", "aria-label", "title"]) {
      for (const node of root.querySelectorAll(`[data-i18n-${attr}]`)) {
        node.setAttribute(attr, t(node.getAttribute(`data-i18n-${attr}`)));
      }
    }
  }
  /** A value from the gateway, translated when the catalogue has it, else as it came. */
  function label(table, v) {
    return v in table ? tk(table[v]) : String(v);
  }
  /** The name of an alarm rule: built-in rules have one in the catalogue ("rule.<id>"), rules
      of the site's own config show their id. */
  function ruleLabel(rule) {
    return has(`rule.${rule}`) ? tk(`rule.${rule}`) : rule;
  }
  const SEVERITIES = { info: k("sev.info"), warning: k("sev.warning"), alarm: k("sev.alarm"), critical: k("sev.critical") };
  const severityLabel = (severity) => label(SEVERITIES, severity);

  // ---------------------------------------------------------------- formatting
  function numberFormat(digits) {
    const id = `n${digits}`;
    let f = i18n.formats.get(id);
    if (!f) {
      f = digits === null
        ? new Intl.NumberFormat(i18n.lang, { maximumFractionDigits: 2 })
        : new Intl.NumberFormat(i18n.lang, { minimumFractionDigits: digits, maximumFractionDigits: digits });
      i18n.formats.set(id, f);
    }
    return f;
  }
  /** A number with `digits` decimals for the language; "—" for no value. */
  function num(value, digits) {
    return typeof value === "number" && Number.isFinite(value) ? numberFormat(digits).format(value) : "—";
  }
  /** A number as it comes (up to 2 decimals), for limits and counts inside texts. */
  function plain(value) {
    return Number.isFinite(value) ? numberFormat(null).format(value) : "—";
  }
  function clock(ms) {
    let f = i18n.formats.get("time");
    if (!f) i18n.formats.set("time", (f = new Intl.DateTimeFormat(i18n.lang, { timeStyle: "medium" })));
    return f.format(new Date(ms));
  }
  function ago(seconds) {
    if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return t("ago.never");
    const s = Math.max(0, seconds);
    if (s < 60) return t("ago.s", { s: Math.floor(s) });
    if (s < 3600) return t("ago.min", { m: Math.floor(s / 60) });
    if (s < 86400) return t("ago.h_min", { h: Math.floor(s / 3600), m: Math.floor((s % 3600) / 60) });
    return t("ago.d", { d: Math.floor(s / 86400) });
  }
  function duration(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 3600) return t("dur.min", { m: Math.floor(s / 60) });
    if (s < 86400) return t("dur.h_min", { h: Math.floor(s / 3600), m: Math.floor((s % 3600) / 60) });
    return t("dur.d_h", { d: Math.floor(s / 86400), h: Math.floor((s % 86400) / 3600) });
  }

  return {
    pick, remember, use, t, k, tk, has, tParts, translateTree, label, ruleLabel, severityLabel,
    num, plain, clock, ago, duration,
  };
})();
