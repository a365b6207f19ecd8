// Reports (/reports): a supervisor's view of response times and satisfaction.
// Fetches GET /api/report (JSON of docs/REPORTS.md) with the supervisor's
// token, shows the table and draws the charts as inline SVG.
"use strict";

(() => {
  const { el, setStatus, load, save, stageLabel } = kefu;
  const $ = (id) => document.getElementById(id);
  const SESSION_KEY = "kefu.supervisor";
  const SVG = "http://www.w3.org/2000/svg";

  /** Report fields in table order, with their Chinese column names and kind. */
  const FIELDS = [
    ["rounds", "轮次", "int"],
    ["answered", "已回复", "int"],
    ["first_response_avg_s", "首响 (秒)", "sec"],
    ["response_avg_s", "平响 (秒)", "sec"],
    ["response_p50_s", "中位数 (秒)", "sec"],
    ["response_p90_s", "P90 (秒)", "sec"],
    ["within_30s_rate", "30 秒应答率", "rate"],
    ["within_3min_rate", "3 分钟应答率", "rate"],
    ["breaches", "超时轮次", "int"],
    ["ratings", "评价数", "int"],
    ["ratings_excluded", "剔除评价", "int"],
    ["satisfaction_rate", "满意度", "rate"],
    ["suggestion_use_rate", "推荐采用率", "rate"],
    ["gold_medal_eligible", "金牌客服", "bool"],
  ];
  const BY_NAMES = { agent: "客服", day: "日期", stage: "阶段", shop: "店铺" };

  let session = null; // {shop, token}
  let last = "7d";
  let report = null; // the JSON of the latest query
  let reportBy = null;
  /** Numbers the queries: an answer to an older one than the latest is dropped. */
  let querySeq = 0;
  /** The shop's UTC offset in minutes (header of every answer; UTC+8 until one came). */
  let shopOffsetMin = 480;
  /** The CSV's file name, from the query the figures on the page answer. */
  let reportFile = "";

  // ---------- formatting ----------

  function fmt(v, kind) {
    if (v === null || v === undefined) return "—";
    switch (kind) {
      case "rate":
        return `${(v * 100).toFixed(1)}%`;
      case "sec":
        return v.toFixed(1);
      case "bool":
        return v ? "达标" : "未达标";
      default:
        return String(v);
    }
  }

  function keyName(by, key) {
    if (by === "stage") return key === "unknown" ? "未识别" : stageLabel(key);
    if (by === "agent" && key === "unassigned") return "未分配";
    return key;
  }

  function secLabel(s) {
    if (s === null || s === undefined) return "";
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${+(s / 60).toFixed(1)}m`;
    return `${+(s / 3600).toFixed(1)}h`;
  }

  // ---------- sign in ----------

  function showSignin(error) {
    $("signin").hidden = false;
    $("page").hidden = true;
    $("signout").hidden = true;
    $("who").textContent = "";
    $("signin-error").textContent = error || "";
    setStatus("off", "未登录");
    const s = load(SESSION_KEY);
    if (s && s.shop) $("in-shop").value = s.shop;
  }

  /**
   * Forgets the figures on the page: a supervisor who signs out leaves
   * nothing for the next one, whose shop's first query may fail and must
   * not show the previous shop's figures as "the previous result" (found
   * by review).
   */
  function clearReport() {
    report = null;
    reportBy = null;
    reportFile = "";
    for (const id of ["cards", "table"]) $(id).replaceChildren();
    for (const id of ["chart-dist", "chart-agents", "chart-hours"]) $(id).querySelector(".body").replaceChildren();
    $("range-note").textContent = "";
    $("error").hidden = true;
    $("csv").disabled = true;
  }

  function signIn(s) {
    clearReport();
    session = s;
    save(SESSION_KEY, s);
    $("signin").hidden = true;
    $("page").hidden = false;
    $("signout").hidden = false;
    $("who").textContent = `店铺 ${s.shop} · 主管`;
    setStatus("on", "已登录");
    query();
  }

  // ---------- fetching ----------

  function params(by) {
    const p = new URLSearchParams({ shop: session.shop });
    if (last) p.set("last", last);
    else {
      if ($("from").value) p.set("from", $("from").value);
      if ($("to").value) p.set("to", $("to").value);
    }
    if (by) p.set("by", by);
    return p;
  }

  async function fetchReport(by) {
    let res;
    try {
      // Relative: beside the page, also under a proxy's sub-path.
      res = await fetch(`api/report?${params(by)}`, {
        headers: { Authorization: `Bearer ${session.token}`, Accept: "application/json" },
        cache: "no-store",
      });
    } catch (e) {
      throw Object.assign(new Error(`连不上服务器：${e.message}`), { status: 0 });
    }
    const off = /^([+-])(\d\d):(\d\d)$/.exec(res.headers.get("x-kefu-utc-offset") || "");
    if (off) shopOffsetMin = (off[1] === "-" ? -1 : 1) * (Number(off[2]) * 60 + Number(off[3]));
    const body = await res.text();
    let json = null;
    try {
      json = JSON.parse(body);
    } catch {
      /* not JSON: the error text below says what came back */
    }
    if (!res.ok) {
      const why = (json && (json.message || json.error)) || body.slice(0, 200) || res.statusText;
      if (res.status === 429 && json && Number.isInteger(json.retry_after) && json.retry_after > 0) {
        const wait = kefu.waitText(json.retry_after);
        throw Object.assign(new Error(`登录失败的次数太多，为保护账号已暂停查询，请 ${wait}后再试（HTTP 429）`), { status: 429 });
      }
      throw Object.assign(new Error(explain(res.status, why)), { status: res.status });
    }
    if (!json || typeof json.total !== "object") throw Object.assign(new Error("报表格式不对：缺少 total"), { status: res.status });
    return json;
  }

  /**
   * The server's refusal in Chinese, with its own words and the HTTP status
   * in parentheses for support: "开始日期不能晚于结束日期…（HTTP 400：from
   * must come before to）".
   */
  function explain(status, why) {
    const known = [
      [/from must come before to/, "开始日期不能晚于结束日期，请重新选择日期"],
      [/give either last=/, "时间范围有误：请选一个快捷范围，或自定义开始和结束日期"],
      [/give the shop/, "缺少店铺 ID，请重新登录"],
      [/unknown grouping/, "不支持这种分组方式"],
      [/--last|number of days/, "时间范围有误，请重新选择"],
      [/date|YYYY-MM-DD|day/i, "日期格式不对，请用日期选择器重新选择"],
      [/keeps no event log/, "服务器没有保存事件记录，无法生成报表"],
      [/wrong supervisor token|unknown shop/, "店铺 ID 或主管令牌不正确"],
      [/Authorization: Bearer/, "缺少主管令牌，请重新登录"],
      [/too many failed sign-ins/, "登录失败的次数太多，为保护账号已暂停查询，请稍后再试"],
    ];
    let text = (known.find(([re]) => re.test(why)) || [])[1];
    if (!text) {
      if (status === 404) text = "服务器没有报表接口 /api/report 或店铺不存在";
      else if (status >= 500) text = "服务器生成报表时出错，请稍后再试";
      else text = "查询没有成功";
    }
    return `${text}（HTTP ${status}：${why}）`;
  }

  async function query() {
    const by = $("by").value;
    const seq = ++querySeq;
    $("error").hidden = true;
    $("run").disabled = true;
    setStatus("wait", "查询中…");
    try {
      // The per-agent chart needs the agent grouping whatever the table shows.
      const [main, agents] = await Promise.all([fetchReport(by), by === "agent" ? null : fetchReport("agent")]);
      if (seq !== querySeq) return; // a newer query is under way
      report = main;
      reportBy = by;
      reportFile = `kefu-report-${session.shop}-${by}-${last || `${$("from").value}_${$("to").value}`}.csv`;
      rangeNote.shown = rangeNote();
      $("range-note").textContent = rangeNote.shown;
      setStatus("on", `已更新 ${kefu.clockTime(Date.now())}`);
      render(main, by, agents || main);
      $("csv").disabled = false;
    } catch (e) {
      if (seq !== querySeq) return;
      // 429: too many wrong tokens for this shop lately; back to the form,
      // which says how long to wait.
      if (e.status === 401 || e.status === 403 || e.status === 429) {
        save(SESSION_KEY, { shop: session.shop });
        showSignin(`无法查看报表：${e.message}`);
        return;
      }
      setStatus("off", "查询失败");
      $("error").textContent = e.message;
      $("error").hidden = false;
      // The figures on the page belong to the previous query: say so.
      $("range-note").textContent = report ? `下方仍是上一次的结果（${rangeNote.shown}）` : "";
      $("csv").disabled = true;
    } finally {
      if (seq === querySeq) $("run").disabled = false;
    }
  }

  function rangeNote() {
    if (last === "1d") return "范围：今天";
    if (last) return `范围：近 ${parseInt(last, 10)} 天（含今天）`;
    return `范围：${$("from").value || "最早"} 至 ${$("to").value || "现在"}`;
  }

  // ---------- rendering ----------

  function render(r, by, agentReport) {
    renderCards(r.total);
    renderTable(r, by);
    drawDistribution($("chart-dist").querySelector(".body"), r.total);
    drawAgents($("chart-agents").querySelector(".body"), agentReport.groups || []);
    drawHours($("chart-hours").querySelector(".body"), r.total);
  }

  function renderCards(t) {
    const card = (label, value, note, cls) =>
      el("div", { class: "card" }, el("div", { class: "label" }, label), el("div", { class: `value ${cls || ""}` }, value), el("div", { class: "note" }, note));
    const rate30 = t.within_30s_rate;
    $("cards").replaceChildren(
      card("接待轮次", fmt(t.rounds, "int"), `已回复 ${fmt(t.answered, "int")}`),
      card("平均响应（平响）", t.response_avg_s == null ? "—" : `${fmt(t.response_avg_s, "sec")}s`, `中位数 ${secOrDash(t.response_p50_s)} · P90 ${secOrDash(t.response_p90_s)}`),
      card("首次响应", t.first_response_avg_s == null ? "—" : `${fmt(t.first_response_avg_s, "sec")}s`, "每个会话的第一轮"),
      card("30 秒应答率", fmt(rate30, "rate"), `3 分钟 ${fmt(t.within_3min_rate, "rate")}`, rate30 == null ? "" : rate30 >= 0.9 ? "good" : rate30 < 0.6 ? "bad" : ""),
      card("超时轮次", fmt(t.breaches, "int"), "超过响应目标", t.breaches > 0 ? "bad" : "good"),
      card("满意度", fmt(t.satisfaction_rate, "rate"), `评价 ${fmt(t.ratings, "int")} · 剔除 ${fmt(t.ratings_excluded, "int")} · 金牌${t.gold_medal_eligible ? "达标" : "未达标"}`),
    );
  }

  function secOrDash(v) {
    return v == null ? "—" : `${fmt(v, "sec")}s`;
  }

  function renderTable(r, by) {
    const head = el("tr", {}, el("th", {}, BY_NAMES[by] || "分组"), ...FIELDS.map(([f, name]) => el("th", { title: f, scope: "col" }, name)));
    const row = (key, fig, cls) =>
      el(
        "tr",
        { class: cls || null, dataset: { key } },
        el("td", {}, key),
        ...FIELDS.map(([f, , kind]) => {
          const v = fig[f];
          let c = null;
          if (f === "within_30s_rate" && v != null) c = v >= 0.9 ? "good" : v < 0.6 ? "bad" : null;
          if (f === "breaches" && v > 0) c = "bad";
          if (f === "gold_medal_eligible") c = v ? "good" : null;
          return el("td", { class: c }, fmt(v, kind));
        }),
      );
    const groups = r.groups || [];
    $("table").replaceChildren(
      el("thead", {}, head),
      el("tbody", {}, row("合计", r.total, "total"), ...groups.map((g) => row(keyName(by, g.key), g))),
    );
    if (!groups.length && r.total.rounds === 0) {
      $("table").append(el("tbody", {}, el("tr", {}, el("td", { colspan: String(FIELDS.length + 1), class: "muted" }, "这个时段没有计入的轮次"))));
    }
  }

  /** Creates an SVG element. */
  function s(tag, attrs, ...children) {
    const n = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) n.setAttribute(k, v);
    for (const c of children.flat()) if (c !== null && c !== undefined) n.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return n;
  }

  function missing(box, text) {
    box.replaceChildren(el("div", { class: "missing" }, text));
  }

  /**
   * Response-time histogram with the 30-second line. Needs
   * `total.response_histogram`: [{lo_s, hi_s, count}], hi_s null for the
   * last open bucket. Without it, a strip of average, median and P90
   * against the 30-second line.
   */
  function drawDistribution(box, t) {
    const W = 320,
      H = 200,
      L = 34,
      R = 8,
      T = 16,
      B = 34;
    const buckets = Array.isArray(t.response_histogram) ? t.response_histogram : null;
    if (!buckets || !buckets.length) {
      if (t.response_p50_s == null) return missing(box, "这个时段没有轮次");
      return drawStrip(box, t);
    }
    const max = Math.max(1, ...buckets.map((b) => b.count));
    const bw = (W - L - R) / buckets.length;
    const y = (v) => T + (H - T - B) * (1 - v / max);
    const g = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "响应时间分布" });
    // y axis: 0, half, max
    for (const v of new Set([0, Math.round(max / 2), max])) {
      g.append(s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#eceef1" }));
      g.append(s("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end" }, v));
    }
    let line30 = null;
    buckets.forEach((b, i) => {
      const x = L + i * bw;
      const over = b.lo_s >= 30;
      g.append(
        s("rect", { x: x + 1, y: y(b.count), width: Math.max(1, bw - 2), height: H - B - y(b.count), fill: over ? "#e57373" : "#4caf7a", "data-count": b.count }, s("title", {}, `${secLabel(b.lo_s)}–${b.hi_s == null ? "" : secLabel(b.hi_s)}：${b.count} 轮`)),
      );
      if (i % Math.ceil(buckets.length / 8) === 0) g.append(s("text", { x, y: H - B + 14, "text-anchor": "middle" }, secLabel(b.lo_s)));
      if (b.lo_s <= 30 && (b.hi_s == null || b.hi_s > 30)) line30 = x + (b.hi_s == null ? 0 : ((30 - b.lo_s) / (b.hi_s - b.lo_s)) * bw);
    });
    const lastB = buckets[buckets.length - 1];
    if (lastB.hi_s != null) g.append(s("text", { x: W - R, y: H - B + 14, "text-anchor": "end" }, secLabel(lastB.hi_s)));
    if (line30 === null && buckets[0].lo_s > 30) line30 = L;
    if (line30 !== null) {
      g.append(s("line", { x1: line30, x2: line30, y1: T - 6, y2: H - B, stroke: "#c62828", "stroke-width": 2, "stroke-dasharray": "5 3" }));
      g.append(s("text", { x: line30 + 4, y: T + 2, class: "line30" }, "30 秒"));
    }
    g.append(s("text", { x: (W + L) / 2, y: H - 4, "text-anchor": "middle" }, "响应时间（轮次数）"));
    box.replaceChildren(g);
  }

  /** Fallback: average, median and P90 on one time axis with the 30-second line. */
  function drawStrip(box, t) {
    const W = 320,
      H = 200,
      L = 20,
      R = 20;
    const marks = [
      ["中位数", t.response_p50_s, "#4caf7a", "p50"],
      ["平均", t.response_avg_s, "#2458c6", "avg"],
      ["P90", t.response_p90_s, "#e57373", "p90"],
    ].filter(([, v]) => v != null);
    const want = Math.max(...marks.map(([, v]) => v)) * 1.1;
    const top = [60, 90, 120, 180, 300, 600].find((t) => t >= want) || 600;
    const x = (v) => L + ((W - L - R) * Math.min(v, top)) / top;
    const g = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "响应时间：中位数、平均、P90" });
    g.append(s("line", { x1: L, x2: W - R, y1: 120, y2: 120, stroke: "#9aa1ab" }));
    for (const v of [0, 30, top / 2, top]) {
      if (v !== 30 && Math.abs(v - 30) < top * 0.15) continue;
      g.append(s("line", { x1: x(v), x2: x(v), y1: 116, y2: 124, stroke: "#9aa1ab" }));
      g.append(s("text", { x: x(v), y: 140, "text-anchor": "middle" }, secLabel(v)));
    }
    g.append(s("line", { x1: x(30), x2: x(30), y1: 20, y2: 124, stroke: "#c62828", "stroke-width": 2, "stroke-dasharray": "5 3" }));
    g.append(s("text", { x: x(30) + 4, y: 28, class: "line30" }, "30 秒"));
    marks.forEach(([name, v, color, cls], i) => {
      const yy = 50 + i * 22;
      g.append(s("line", { x1: x(v), x2: x(v), y1: yy + 4, y2: 120, stroke: color, "stroke-width": 2 }));
      g.append(s("circle", { cx: x(v), cy: 120, r: 4, fill: color }));
      g.append(s("text", { x: x(v) + 4, y: yy, class: cls }, `${name} ${v.toFixed(1)}s`));
    });
    g.append(s("text", { x: W / 2, y: 180, "text-anchor": "middle" }, "未提供分布数据（response_histogram），显示分位数"));
    box.replaceChildren(g);
  }

  /** Horizontal bars: each agent's 30-second rate, worst first. */
  function drawAgents(box, groups) {
    const rows = groups.filter((g) => g.within_30s_rate != null).sort((a, b) => a.within_30s_rate - b.within_30s_rate).slice(0, 12);
    if (!rows.length) return missing(box, "这个时段没有客服的轮次");
    const W = 320,
      L = 70,
      R = 54,
      row = 22,
      T = 8;
    const H = T + rows.length * row + 22;
    const x = (v) => L + (W - L - R) * v;
    const g = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "各客服 30 秒应答率" });
    rows.forEach((r, i) => {
      const yy = T + i * row;
      const v = r.within_30s_rate;
      const color = v >= 0.9 ? "#4caf7a" : v >= 0.6 ? "#f0a830" : "#e57373";
      // Long names are cut with … (the whole one is in the bar's tooltip).
      const label = [...keyName("agent", r.key)];
      g.append(s("text", { x: L - 6, y: yy + 14, "text-anchor": "end" }, label.length > 6 ? `${label.slice(0, 5).join("")}…` : label.join("")));
      g.append(s("rect", { x: L, y: yy + 3, width: W - L - R, height: row - 8, fill: "#f1f2f4" }));
      g.append(s("rect", { x: L, y: yy + 3, width: Math.max(1, x(v) - L), height: row - 8, fill: color, "data-agent": r.key }, s("title", {}, `\u2068${r.key}\u2069：${fmt(v, "rate")}（${r.rounds} 轮）`)));
      g.append(s("text", { x: W - R + 4, y: yy + 14 }, `${fmt(v, "rate")}`));
    });
    const base = T + rows.length * row;
    for (const v of [0, 0.5, 1]) g.append(s("text", { x: x(v), y: base + 14, "text-anchor": "middle" }, `${v * 100}%`));
    box.replaceChildren(g);
  }

  /** Rounds per hour of the day. Needs `total.rounds_by_hour` (24 counts). */
  function drawHours(box, t) {
    const hours = Array.isArray(t.rounds_by_hour) && t.rounds_by_hour.length === 24 ? t.rounds_by_hour : null;
    if (!hours) return missing(box, "服务器未提供按小时统计（rounds_by_hour）");
    const W = 320,
      H = 200,
      L = 30,
      R = 6,
      T = 12,
      B = 34;
    const max = Math.max(1, ...hours);
    const bw = (W - L - R) / 24;
    const y = (v) => T + (H - T - B) * (1 - v / max);
    const g = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "各时段接待轮次" });
    for (const v of new Set([0, Math.round(max / 2), max])) {
      g.append(s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#eceef1" }));
      g.append(s("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end" }, v));
    }
    hours.forEach((v, h) => {
      const x = L + h * bw;
      g.append(s("rect", { x: x + 1, y: y(v), width: Math.max(1, bw - 2), height: H - B - y(v), fill: "#ff8a4c", "data-hour": h }, s("title", {}, `${h}:00–${h + 1}:00：${v} 轮`)));
      if (h % 3 === 0) g.append(s("text", { x: x + bw / 2, y: H - B + 14, "text-anchor": "middle" }, `${h}时`));
    });
    g.append(s("text", { x: (W + L) / 2, y: H - 4, "text-anchor": "middle" }, "一天中的时段（店铺时区）"));
    box.replaceChildren(g);
  }

  // ---------- CSV ----------

  /** As the CLI's: a cell that starts like a formula gets a leading ' (an agent named =HYPERLINK(...) stays text). */
  function csvCell(v) {
    let t = v === null || v === undefined ? "" : String(v);
    if (/^[=+\-@\t\r]/.test(t)) t = `'${t}`;
    return /[",\n\r]/.test(t) ? `"${t.replace(/"/g, '""')}"` : t;
  }

  /** The same columns as `kefu report --format csv`: by,key,then every field. */
  function toCsv(r, by) {
    const lines = [["by", "key", ...FIELDS.map(([f]) => f)].join(",")];
    const line = (b, key, fig) => [b, key, ...FIELDS.map(([f]) => fig[f])].map(csvCell).join(",");
    lines.push(line("total", "", r.total));
    for (const g of r.groups || []) lines.push(line(by, g.key, g));
    return `${lines.join("\n")}\n`;
  }

  function downloadCsv() {
    if (!report) return;
    // A byte-order mark so spreadsheet programs read the UTF-8 as such.
    const blob = new Blob(["\ufeff", toCsv(report, reportBy)], { type: "text/csv;charset=utf-8" });
    const a = el("a", { href: URL.createObjectURL(blob), download: reportFile });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  // ---------- controls ----------

  for (const b of $("period").querySelectorAll("button")) {
    b.addEventListener("click", () => {
      last = b.dataset.last;
      for (const o of $("period").querySelectorAll("button")) o.classList.toggle("on", o === b);
      $("from-wrap").hidden = !!last;
      $("to-wrap").hidden = !!last;
      if (!last && !$("from").value) {
        // The shop's days (its UTC offset, from the last answer), not the
        // computer's: 近 7 天 and these dates must cover the same days.
        const day = (ms) => new Date(ms + shopOffsetMin * 60000).toISOString().slice(0, 10);
        const now = Date.now();
        $("to").value = day(now);
        $("from").value = day(now - 6 * 86400000);
      }
      // 自定义 runs at once with the dates shown (the last 7 days the first
      // time); changing a date runs it again.
      query();
    });
  }
  // A date typed with the keyboard fires `change` at each complete value:
  // wait a moment for the typing to end.
  let dateTimer = null;
  for (const id of ["from", "to"]) {
    $(id).addEventListener("change", () => {
      clearTimeout(dateTimer);
      dateTimer = setTimeout(query, 400);
    });
  }
  $("by").addEventListener("change", query);
  $("controls").addEventListener("submit", (e) => {
    e.preventDefault();
    query();
  });
  $("csv").addEventListener("click", downloadCsv);
  $("signout").addEventListener("click", () => {
    save(SESSION_KEY, { shop: session && session.shop });
    session = null;
    querySeq++; // an answer still on its way is for nobody now
    clearReport();
    showSignin("");
  });
  $("signin").addEventListener("submit", (e) => {
    e.preventDefault();
    const shop = $("in-shop").value.trim();
    const token = $("in-token").value;
    if (!shop || !token) return;
    // A header carries the token: only printable ASCII can go (a token in
    // Chinese failed as "连不上服务器"; found by review).
    if (!/^[\x21-\x7e]+$/.test(token)) {
      showSignin("主管令牌只能包含英文字母、数字和符号，请检查后重新输入");
      return;
    }
    $("in-token").value = "";
    signIn({ shop, token });
  });

  const saved = load(SESSION_KEY);
  if (saved && saved.shop && saved.token) signIn(saved);
  else showSignin("");
})();
