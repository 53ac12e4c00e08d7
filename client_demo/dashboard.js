// Polls GET /api/rooms/<id>/stats (docs/API.md) every 5 s and draws it with the vendored uPlot.
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
$("api").value = params.get("api") || "";
$("room").value = params.get("room") || $("room").value;
$("token").value = params.get("token") || "";

const FIGURES = [
  ["concurrent_now", "viewer connections now"],
  ["peak_concurrent", "peak viewer connections"],
  ["unique_viewers", "unique viewers"],
  ["watch_time_avg_s", "avg watch time (s)"],
  ["interaction_rate", "interaction rate"],
  ["danmaku_per_min", "danmaku / min"],
  ["likes_per_min", "likes / min"],
  ["return_rate", "return rate"],
  ["questions.asked", "questions asked"],
  ["questions.answered_assistant", "answered by the assistant"],
  ["questions.answered_host", "answered by the host"],
  ["questions.unanswered", "unanswered"],
  ["questions.latency_ms.p50", "answer latency p50 (ms)"],
  ["questions.latency_ms.p95", "answer latency p95 (ms)"],
];
const pick = (obj, path) => path.split(".").reduce((o, k) => o?.[k], obj);
const fmt = (v) => (typeof v === "number" && !Number.isInteger(v) ? v.toFixed(2) : String(v ?? "–"));

let ffLabels = [];
const times = [];
const counts = [];
// uPlot spreads a single sample over years: show at least the last 5 minutes, and 0 on the y axis
const MIN_SPAN_S = 300;
function viewersSpan() {
  const last = times.length ? times[times.length - 1] : Date.now() / 1000;
  return [Math.min(times.length ? times[0] : last, last - MIN_SPAN_S), last + 5];
}
const viewersChart = new uPlot(
  {
    width: 480, height: 220,
    scales: {
      x: { time: true, range: () => viewersSpan() }, // from the samples: uPlot pads a lone one by ~3 years
      y: { range: () => [0, Math.max(1, ...counts) * 1.1] },
    },
    series: [{}, { label: "viewers", stroke: "#4a7bd0", width: 2, points: { show: true } }],
  },
  [times, counts],
  $("viewers"),
);
const bars = uPlot.paths.bars({ size: [0.8] });
const ffChart = new uPlot(
  {
    width: 480, height: 220,
    scales: { x: { time: false } },
    axes: [{ values: (_, ticks) => ticks.map((i) => ffLabels[i] ?? "") }, {}],
    series: [{}, { label: "viewers", fill: "#7aa6e8", stroke: "#4a7bd0", paths: bars }],
  },
  [[], []],
  $("firstframe"),
);
let timer = null;
window.dashboard = { viewers: viewersChart }; // for tests/test_browser_console.py

function render(stats) {
  const rows = FIGURES.map(([key, label]) => {
    const cells = ["live", "hour", "day"].map((w) => `<td>${fmt(pick(stats[w], key))}</td>`).join("");
    return `<tr><td>${label}</td>${cells}</tr>`;
  });
  $("windows").tBodies[0].innerHTML = rows.join("");
  times.push(stats.now);
  counts.push(stats.day.concurrent_now);
  if (times.length > 720) { times.shift(); counts.shift(); }
  viewersChart.setData([times, counts]);
  const buckets = stats.day.first_frame.buckets_ms;
  ffLabels = Object.keys(buckets).map((b) => (b === "+Inf" ? ">5000" : `≤${b}`));
  ffChart.setData([ffLabels.map((_, i) => i), Object.values(buckets)]);
  const top = stats.day.questions?.top_unanswered || [];
  $("unanswered").replaceChildren(...top.map((q) => {
    const li = document.createElement("li");
    li.textContent = `${q.label} (×${q.count})`;
    return li;
  }));
  const funnel = $("funnel");
  funnel.replaceChildren(...stats.day.funnel.map((s) => {
    const row = document.createElement("p");
    const bar = document.createElement("div");
    bar.style.width = `${Math.max(1, s.rate * 100) * 3}px`;
    row.append(`${s.step}: ${s.users} (${(s.rate * 100).toFixed(0)} %)`, bar);
    return row;
  }));
}

async function poll() {
  const url = `${$("api").value.replace(/\/$/, "")}/api/rooms/${encodeURIComponent($("room").value)}/stats`;
  try {
    const response = await fetch(url, { headers: { Authorization: `Bearer ${$("token").value}` } });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
    $("status").textContent = "";
    $("prompt").hidden = true;
    $("windows").hidden = false;
    $("charts").hidden = false;
  } catch (error) {
    // fetch's own message ("Failed to fetch", "NetworkError when…") says nothing of where
    const unreachable = error instanceof TypeError;
    $("status").textContent = unreachable ? `stats: cannot reach ${$("api").value} (is the stats API base right?)` : `stats: ${error.message}`;
  }
}

/** The stats API is on the server's HTTP port (--http-port): the server says where (/api/config). */
async function apiBase() {
  try {
    const response = await fetch("/api/config", { cache: "no-store" });
    if (response.ok) {
      const { http_url: url } = await response.json();
      if (url) return url;
    }
  } catch {}
  return `${location.protocol}//${location.hostname}:8081`; // an older server: the default port
}

$("settings").addEventListener("submit", (event) => {
  event.preventDefault();
  times.length = 0;
  counts.length = 0;
  clearInterval(timer);
  poll();
  timer = setInterval(poll, 5000);
});
$("dev-token").addEventListener("click", async () => {
  const q = new URLSearchParams({ room: $("room").value, user: "dashboard", role: "host" });
  const response = await fetch(`/api/dev/token?${q}`, { cache: "no-store" });
  if (!response.ok) {
    $("status").textContent = "no dev tokens on this server: use liveroom token --role host";
    return;
  }
  $("token").value = (await response.json()).token;
  $("settings").requestSubmit();
});
(async () => {
  if (!$("api").value) $("api").value = await apiBase();
  if ($("token").value) $("settings").requestSubmit();
  else $("status").textContent = "waiting for a token";
})();
