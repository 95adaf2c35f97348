// chipfuse's page: a streaming chat and a live view of the dies. No libraries, no build step.
"use strict";
const $ = (id) => document.getElementById(id);
const history = [];
$("key").value = localStorage.getItem("chipfuse-key") || "";
$("key").addEventListener("change", () => localStorage.setItem("chipfuse-key", $("key").value));

function headers() {
  const h = { "Content-Type": "application/json" };
  if ($("key").value) h["Authorization"] = "Bearer " + $("key").value;
  return h;
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("log").appendChild(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}

async function send(text) {
  history.push({ role: "user", content: text });
  bubble("user", text);
  const out = bubble("assistant", "");
  $("send").disabled = true;
  $("status").textContent = "generating…";
  const t0 = performance.now();
  let tokens = 0, answer = "";
  try {
    const r = await fetch("/v1/chat/completions", { method: "POST", headers: headers(),
      body: JSON.stringify({ messages: history, stream: true, max_tokens: 256, temperature: 0 }) });
    if (!r.ok) {
      const err = await r.json().catch(() => ({ error: { message: r.statusText } }));
      throw new Error(err.error ? err.error.message : r.statusText);
    }
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const line = buf.slice(0, cut).trim();
        buf = buf.slice(cut + 2);
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const ev = JSON.parse(line.slice(6));
        if (ev.error) throw new Error(ev.error.message);
        const piece = ev.choices[0].delta.content || "";
        if (piece) { answer += piece; tokens += 1; out.textContent = answer; }
      }
    }
    history.push({ role: "assistant", content: answer });
    const s = (performance.now() - t0) / 1000;
    $("status").textContent = `${tokens} pieces in ${s.toFixed(1)} s`;
  } catch (e) {
    out.className = "msg error";
    out.textContent = "error: " + e.message;
    history.pop();
    $("status").textContent = "";
  } finally {
    $("send").disabled = false;
  }
}

$("form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("prompt").value.trim();
  if (!text) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("form").requestSubmit(); }
});

function mib(b) { return (b / 1048576).toFixed(1) + " MiB"; }
function rate(bps) {
  if (bps >= 1e9) return (bps / 1e9).toFixed(2) + " GB/s";
  if (bps >= 1e6) return (bps / 1e6).toFixed(2) + " MB/s";
  if (bps >= 1e3) return (bps / 1e3).toFixed(1) + " kB/s";
  return bps.toFixed(0) + " B/s";
}

function draw(d) {
  const svg = $("topology");
  const nodes = ["host", ...d.dies.map((x) => x.die)];
  const w = svg.clientWidth || 600, gap = w / (nodes.length + 1);
  const pos = Object.fromEntries(nodes.map((n, i) => [n, { x: gap * (i + 1), y: n === "host" ? 40 : 110 }]));
  let s = "";
  for (const l of d.links) {
    const a = pos[l.from], b = pos[l.to];
    if (!a || !b) continue;
    const flow = l.bytes_per_s;  // the sending die's own count ("die"), or the plan's bytes at the measured rate
    const width = 1 + Math.min(6, Math.log10(1 + flow / 1e3));
    s += `<line x1="${a.x}" y1="${a.y}" x2="${b.x}" y2="${b.y}" stroke="#a8dadc" stroke-width="${width}"/>`;
    s += `<text x="${(a.x + b.x) / 2}" y="${(a.y + b.y) / 2 - 4}" font-size="10" text-anchor="middle" class="flow">${rate(flow)}${l.source === "plan" ? " (plan)" : ""}</text>`;
  }
  for (const n of nodes) {
    const p = pos[n];
    const die = d.dies.find((x) => x.die === n);
    const share = die ? die.share : 0;
    s += `<rect x="${p.x - 38}" y="${p.y - 18}" width="76" height="36" rx="5" fill="${n === "host" ? "#1d3557" : "#457b9d"}" opacity="${n === "host" ? 1 : 0.35 + 0.65 * share}"/>`;
    s += `<text x="${p.x}" y="${p.y + 4}" fill="#fff" font-size="12" text-anchor="middle">${n}</text>`;
  }
  svg.innerHTML = s;
}

async function poll() {
  try {
    const r = await fetch("/v1/device", { headers: headers() });
    if (r.ok) {
      const d = await r.json();
      $("model").textContent = d.model;
      $("system").textContent = `${d.system} (${d.dies.length} dies)`;
      $("measured").textContent = d.measured_tokens_per_s.toFixed(1);
      $("predicted").textContent = d.predicted_tokens_per_s.toFixed(1);
      $("batch").textContent = d.slots;
      $("hw").textContent = d.system;
      $("busy").textContent = d.slots_busy;
      $("slots").textContent = d.slots;
      $("queued").textContent = d.queued;
      $("dies").querySelector("tbody").innerHTML = d.dies.map((x) =>
        `<tr><td>${x.die}</td><td>${x.blocks}</td><td><span class="bar" style="width:${(100 * x.share).toFixed(0)}px"></span>${(100 * x.share).toFixed(0)}%</td><td>${x.busy === null ? "–" : (100 * x.busy).toFixed(0) + "%"}</td><td>${mib(x.resident_bytes)}</td><td>${mib(x.kv_bytes)}</td></tr>`).join("");
      draw(d);
    }
  } catch (e) { /* the server is restarting: try again */ }
  setTimeout(poll, 1000);
}
poll();
