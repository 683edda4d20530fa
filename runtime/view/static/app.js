// awc-pose station viewer: one card per station with a rotatable 3D skeleton (three.js), presence
// lights, contribution bars, degradation status and rehabilitation outputs. Live frames arrive as
// Server-Sent Events; a recording is fetched whole and played with a time slider. A live station
// silent for longer than config.stale_after_s turns stale: greyed skeleton, lights off, the age of
// its last pose, and the header badge says so once no station is live.
import * as THREE from "three";
import { OrbitControls } from "/static/vendor/OrbitControls.js";

const COLORS = { left: 0x3b9cff, right: 0xff7043, centre: 0xd0d7de, gt: 0x7ee787 };
const DEGRADED_WARN = 0.3;   // score shown as a warning below the degraded flag
const stations = new Map();  // name -> card state
const stats = { shown: [], latencies: [] };   // display times (ms) and pose->screen latencies (ms)
// frames: drawn; arrived: received from the server (several arriving within one animation frame
// are drawn once, newest wins); first/lastDrawnMs: performance.now() of the first and last drawn.
window.viewerStats = { frames: 0, arrived: 0, firstDrawnMs: null, lastDrawnMs: null, updatesPerSecond: 0,
  latencyP50Ms: null, latencyP95Ms: null, latencies: [] };
let config = null;

const $ = (sel, root = document) => root.querySelector(sel);
const nowNs = () => (performance.timeOrigin + performance.now()) * 1e6;
const fmt = (x, d = 2) => (x === null || x === undefined || Number.isNaN(x) ? "-" : Number(x).toFixed(d));

function webglAvailable() {
  try {
    const c = document.createElement("canvas");
    return !!(c.getContext("webgl2") || c.getContext("webgl"));
  } catch (e) {
    return false;
  }
}

// ------------------------------------------------------------------ 3D scene of one station
function makeScene(container) {
  if (!webglAvailable()) {
    container.insertAdjacentHTML("beforeend", '<div class="no-webgl">WebGL is not available in this browser: the 3D view is off.</div>');
    return null;
  }
  const renderer = new THREE.WebGLRenderer({ antialias: false, preserveDrawingBuffer: true });
  renderer.setPixelRatio(window.devicePixelRatio || 1);
  container.prepend(renderer.domElement);
  const scene = new THREE.Scene();
  scene.background = new THREE.Color(0x0b0f13);
  const camera = new THREE.PerspectiveCamera(45, 1, 0.05, 50);
  camera.position.set(1.6, 0.4, -0.6);
  const controls = new OrbitControls(camera, renderer.domElement);
  controls.target.set(0, 0, -3);
  controls.enableDamping = true;
  const grid = new THREE.GridHelper(4, 16, 0x2a3540, 0x1c252e);
  scene.add(grid);
  const edges = config.edges;
  const makeLines = (colorOf, opacity) => {
    const geom = new THREE.BufferGeometry();
    geom.setAttribute("position", new THREE.BufferAttribute(new Float32Array(edges.length * 6), 3));
    const colors = new Float32Array(edges.length * 6);
    edges.forEach(([a, b], i) => {
      const c = new THREE.Color(colorOf(a, b));
      colors.set([c.r, c.g, c.b, c.r, c.g, c.b], i * 6);
    });
    geom.setAttribute("color", new THREE.BufferAttribute(colors, 3));
    const mat = new THREE.LineBasicMaterial({ vertexColors: true, transparent: opacity < 1, opacity });
    const lines = new THREE.LineSegments(geom, mat);
    lines.frustumCulled = false;
    lines.visible = false;
    scene.add(lines);
    return lines;
  };
  const sideColor = (a, b) => COLORS[config.side[b] !== "centre" ? config.side[b] : config.side[a]];
  const bones = makeLines(sideColor, 1);
  const gt = makeLines(() => COLORS.gt, 0.45);
  const jointGeom = new THREE.BufferGeometry();
  jointGeom.setAttribute("position", new THREE.BufferAttribute(new Float32Array(config.joints.length * 3), 3));
  const jointColors = new Float32Array(config.joints.length * 3);
  config.side.forEach((s, i) => { const c = new THREE.Color(COLORS[s]); jointColors.set([c.r, c.g, c.b], i * 3); });
  jointGeom.setAttribute("color", new THREE.BufferAttribute(jointColors, 3));
  const joints = new THREE.Points(jointGeom, new THREE.PointsMaterial({ size: 0.05, vertexColors: true }));
  joints.frustumCulled = false;
  joints.visible = false;
  scene.add(joints);
  const clouds = {};
  for (const [name, color, size] of [["lidar", 0xaab4be, 0.025], ["mmwave", 0xd29922, 0.05]]) {
    const g = new THREE.BufferGeometry();
    g.setAttribute("position", new THREE.BufferAttribute(new Float32Array(0), 3));
    clouds[name] = new THREE.Points(g, new THREE.PointsMaterial({ size, color, transparent: true, opacity: 0.7 }));
    clouds[name].frustumCulled = false;
    scene.add(clouds[name]);
  }
  const view = { renderer, scene, camera, controls, bones, gt, joints, grid, clouds, container, placed: false };
  hoverLabels(view);
  return view;
}

// Joint names on hover: the joint nearest the pointer (within 12 px on screen) is named beside it.
function jointScreen(view, i) {
  const pos = view.joints.geometry.attributes.position;
  const v = new THREE.Vector3(pos.array[i * 3], pos.array[i * 3 + 1], pos.array[i * 3 + 2]).project(view.camera);
  const r = view.renderer.domElement.getBoundingClientRect();
  return { x: (v.x + 1) / 2 * r.width, y: (1 - v.y) / 2 * r.height, inFront: v.z < 1 };
}

function hoverLabels(view) {
  const label = $(".joint-label", view.container);
  const canvas = view.renderer.domElement;
  canvas.addEventListener("pointermove", (ev) => {
    const r = canvas.getBoundingClientRect();
    const x = ev.clientX - r.left, y = ev.clientY - r.top;
    let best = -1, bestD = 12;
    if (view.joints.visible) {
      config.joints.forEach((_, i) => {
        const p = jointScreen(view, i);
        const d = Math.hypot(p.x - x, p.y - y);
        if (p.inFront && d < bestD) { best = i; bestD = d; }
      });
    }
    label.hidden = best < 0;
    if (best >= 0) {
      label.textContent = config.joint_labels[best];
      label.dataset.joint = config.joints[best];
      label.style.left = `${x}px`;
      label.style.top = `${y}px`;
    }
  });
  canvas.addEventListener("pointerleave", () => { label.hidden = true; });
}

// For tests and tools: where joint i of a station's skeleton is on its canvas (CSS pixels).
window.viewerProject = (station, i) => {
  const st = stations.get(station);
  return st && st.view ? jointScreen(st.view, i) : null;
};

// camera frame (x right, y down, z depth) -> three.js (y up, looking down -z)
const toScene = (p) => [p[0], -p[1], -p[2]];

function setLines(lines, pts) {
  if (!pts) { lines.visible = false; return; }
  const pos = lines.geometry.attributes.position;
  config.edges.forEach(([a, b], i) => {
    if (!pts[a] || !pts[b] || pts[a].includes(null) || pts[b].includes(null)) return;
    pos.array.set([...toScene(pts[a]), ...toScene(pts[b])], i * 6);
  });
  pos.needsUpdate = true;
  lines.visible = true;
}

function updateScene(view, frame) {
  if (!view) return;
  setLines(view.bones, frame.joints);
  setLines(view.gt, frame.gt);
  if (frame.joints) {
    const pos = view.joints.geometry.attributes.position;
    frame.joints.forEach((p, i) => { if (!p.includes(null)) pos.array.set(toScene(p), i * 3); });
    pos.needsUpdate = true;
    view.joints.visible = true;
    const pelvis = toScene(frame.joints[0]);
    const feet = Math.min(...frame.joints.map((p) => -p[1]));
    if (!view.placed && pelvis.every(Number.isFinite)) {
      view.controls.target.set(...pelvis);
      view.camera.position.set(pelvis[0] + 1.1, pelvis[1] + 0.5, pelvis[2] + 1.9);
      view.placed = true;
    }
    if (Number.isFinite(feet)) view.grid.position.set(pelvis[0], feet, pelvis[2]);
  }
  for (const [name, cloud] of Object.entries(view.clouds)) {
    const pts = frame.points && frame.points[name];
    if (!pts) { cloud.visible = false; continue; }
    // forwarded points are in the sensor frame (x forward, y left, z up): show them beside the body
    cloud.geometry.setAttribute("position", new THREE.BufferAttribute(new Float32Array(pts.flatMap((p) => [-p[1], p[2], -p[0]])), 3));
    cloud.visible = true;
  }
}

function resize(view) {
  const w = view.container.clientWidth, h = view.container.clientHeight;
  const canvas = view.renderer.domElement;
  if (canvas.width !== Math.floor(w * view.renderer.getPixelRatio()) || canvas.height !== Math.floor(h * view.renderer.getPixelRatio())) {
    view.renderer.setSize(w, h, false);
    view.camera.aspect = w / Math.max(h, 1);
    view.camera.updateProjectionMatrix();
    return true;
  }
  return false;
}

// ------------------------------------------------------------------ station cards
function stationCard(name) {
  if (stations.has(name)) return stations.get(name);
  $("#waiting")?.remove();
  const node = $("#station-template").content.firstElementChild.cloneNode(true);
  node.dataset.station = name;
  $(".station-name", node).textContent = name;
  const tbody = $(".modalities tbody", node);
  for (const m of config.modalities) {
    tbody.insertAdjacentHTML("beforeend",
      `<tr data-modality="${m}"><td><span class="light"></span></td><td>${m}</td>` +
      `<td><div class="bar"><div></div><span class="mono">-</span></div></td>` +
      `<td class="mono score">-</td><td class="status">-</td></tr>`);
  }
  $("#stations").append(node);
  const st = { node, view: makeScene($(".scene", node)), ticks: [], frame: null, dirty: false, shownAt: null,
    arrivedAt: performance.now(), stale: false };
  stations.set(name, st);
  return st;
}

function tickRate(st, frame) {
  st.ticks.push([frame.tick, frame.t_ns]);
  if (st.ticks.length > 30) st.ticks.shift();
  const [a, b] = [st.ticks[0], st.ticks[st.ticks.length - 1]];
  return b[1] > a[1] ? ((b[0] - a[0]) * 1e9) / (b[1] - a[1]) : null;
}

function statusOf(frame, i) {
  const reason = frame.reasons && frame.reasons[i] ? frame.reasons[i] : "";
  if (frame.degraded[i]) return ["degraded", "degraded" + (reason ? `: ${reason}` : "")];
  if (!frame.presence[i]) return ["absent", "absent" + (reason ? ` (${reason})` : "")];
  if (frame.degradation[i] >= DEGRADED_WARN) return ["warn", "watch" + (reason ? `: ${reason}` : "")];
  return ["ok", "ok"];
}

// An angle as a therapist reads it: the word of its direction and the magnitude ("left shoulder
// extension 38.0°" for shoulder flexion -38), from the words the server sends (config.angle_labels).
function angleReading(key, value) {
  const words = config.angle_labels && config.angle_labels[key];
  if (value === null || value === undefined) return [words ? words[0] : key, "-"];
  if (!words) return [key, `${fmt(value, 1)}°`];
  return [value < 0 && words[1] !== words[0] ? words[1] : words[0], `${fmt(Math.abs(value), 1)}°`];
}

function trustWords(flags) {
  return (flags || []).map((f) => (config.trust_words && config.trust_words[f]) || f);
}

function renderRehab(node, rehab) {
  // The `rehab` map of the pose stream (docs/wire.md): exercise, reps, last_rom_deg, angles_deg
  // {channel: degrees}, exercise_trained, pose_checks, completed (the last repetition with its
  // trust). Unknown keys are listed as they come.
  const box = $(".rehab", node);
  if (!rehab || typeof rehab !== "object") { box.hidden = true; return; }
  box.hidden = false;
  const esc = (x) => String(x).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
  const untrusted = $(".rehab-untrusted", node);
  untrusted.hidden = rehab.exercise_trained !== false;
  untrusted.textContent = rehab.exercise_trained === false
    ? `untrusted: the model was never trained on ${rehab.exercise || "this exercise"}; repetitions and angles are not measurements` : "";
  const summary = [];
  if (rehab.exercise) summary.push(`<span>exercise <b data-rehab="exercise">${esc(rehab.exercise)}</b></span>`);
  if (rehab.reps !== undefined && rehab.reps !== null) summary.push(`<span>repetitions <b class="mono" data-rehab="reps">${rehab.reps}</b></span>`);
  if (rehab.last_rom_deg !== undefined) summary.push(`<span>last ROM <b class="mono" data-rehab="last_rom_deg">${rehab.last_rom_deg === null ? "-" : fmt(rehab.last_rom_deg, 1) + "°"}</b></span>`);
  $(".rehab-summary", node).innerHTML = summary.join("");
  const rows = [];
  const add = (key, value) => {
    if (value === null || value === undefined) rows.push([key, "-"]);
    else if (typeof value === "number") rows.push([key, fmt(value, Number.isInteger(value) ? 0 : 1)]);
    else if (Array.isArray(value)) rows.push([key, value.map((v) => (typeof v === "number" ? fmt(v, 1) : String(v))).join(", ")]);
    else if (typeof value === "object") for (const [k, v] of Object.entries(value)) add(`${key}.${k}`, v);
    else rows.push([key, String(value)]);
  };
  const principal = rehab.principal || "";
  for (const [k, v] of Object.entries(rehab.angles_deg || {})) {
    const [name, reading] = angleReading(k, v);
    const counted = principal && (k === principal || k.startsWith(principal + "_"));
    rows.push([`${name}${counted ? " ◀" : ""}`, reading, k]);
  }
  if (rehab.pose_checks && rehab.pose_checks.length) rows.push(["pose check failed", rehab.pose_checks.join(", ").replace(/_/g, " "), "pose_checks"]);
  if (rehab.completed) {
    const c = rehab.completed;
    const why = trustWords(c.trust_flags);
    const verdict = c.low_confidence ? `low confidence${why.length ? ": " + why.join("; ") : ""}` : "ok";
    rows.push(["last repetition", `#${c.index ?? "-"} ${c.side ?? ""} · ROM ${fmt(c.rom_deg, 1)}° · ${fmt(c.duration_s, 1)} s` +
      ` · fused ${fmt((c.fused_fraction ?? 0) * 100, 0)}% · ${verdict}`, "completed"]);
  }
  const known = new Set(["exercise", "reps", "last_rom_deg", "angles_deg", "completed", "principal", "session",
    "exercise_trained", "pose_checks"]);
  for (const [k, v] of Object.entries(rehab)) if (!known.has(k)) add(k, v);
  $(".rehab-angles tbody", node).innerHTML = rows.map(([k, v, key]) =>
    `<tr${key ? ` data-key="${esc(key)}"` : ""}><td>${esc(k)}</td><td class="mono">${esc(v)}</td></tr>`).join("");
}

function renderPanel(st, frame) {
  const node = st.node;
  const tick = $(".tick", node);
  tick.textContent = frame.tick;
  tick.dataset.tick = frame.tick;
  const rate = tickRate(st, frame);
  $(".rate", node).textContent = fmt(rate, 1);
  $(".latency", node).textContent = `${fmt(frame.latency_ns / 1e6, 1)} ms`;
  $(".outcome", node).textContent = frame.outcome;
  config.modalities.forEach((m, i) => {
    const row = $(`tr[data-modality="${m}"]`, node);
    $(".light", row).classList.toggle("on", !!frame.presence[i]);
    const share = frame.shares ? frame.shares[i] : null;
    $(".bar > div", row).style.width = share === null ? "0%" : `${Math.max(0, Math.min(1, share)) * 100}%`;
    $(".bar > span", row).textContent = share === null ? "-" : `${fmt(share * 100, 0)}%`;
    $(".score", row).textContent = fmt(frame.degradation[i], 2);
    const [cls, text] = statusOf(frame, i);
    const status = $(".status", row);
    status.className = `status ${cls}`;
    status.textContent = text;
    row.dataset.status = cls;
  });
  renderRehab(node, frame.rehab);
}

function show(frame) {
  window.viewerStats.arrived += 1;
  const st = stationCard(frame.station);
  st.frame = frame;
  st.dirty = true;
  st.arrivedAt = performance.now();
  if (st.stale) setStale(st, false, 0);
}

// ------------------------------------------------------------------ stale stations (live mode)
function setStale(st, stale, ageS) {
  const node = st.node, fresh = $(".freshness", node);
  fresh.dataset.stale = String(stale);
  fresh.dataset.ageS = fmt(ageS, 1);
  fresh.textContent = stale ? `stale · last pose ${fmt(ageS, 1)} s ago` : "live";
  if (stale === st.stale) return;
  st.stale = stale;
  node.classList.toggle("stale", stale);
  node.dataset.stale = String(stale);
  $(".scene", node).dataset.skeleton = stale ? "stale" : "live";
  if (stale) {
    for (const row of node.querySelectorAll("tr[data-modality]")) {
      $(".light", row).classList.remove("on");
      const status = $(".status", row);
      status.className = "status absent";
      status.textContent = "no data";
      row.dataset.status = "silent";
    }
  } else if (st.frame) {
    renderPanel(st, st.frame);
  }
}

function checkStale() {
  const limitS = config.stale_after_s ?? 3;
  const t = performance.now();
  let live = 0, newest = null;
  for (const st of stations.values()) {
    const ageS = (t - st.arrivedAt) / 1000;
    setStale(st, ageS > limitS, ageS);
    if (ageS <= limitS) live += 1;
    newest = newest === null ? ageS : Math.min(newest, ageS);
  }
  const badge = $("#connection");
  if (badge.dataset.state === "live" || badge.dataset.state === "stale") {
    const stale = stations.size > 0 && live === 0;
    badge.dataset.state = stale ? "stale" : "live";
    badge.textContent = stale ? `stale · no pose for ${fmt(newest, 0)} s` : "live";
  }
}

// ------------------------------------------------------------------ render loop and measurements
function percentile(xs, q) {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
}

function loop() {
  const t = performance.now();
  for (const st of stations.values()) {
    const fresh = st.dirty;
    if (fresh) {
      renderPanel(st, st.frame);
      updateScene(st.view, st.frame);
      st.dirty = false;
    }
    if (st.view) {
      // Draw only when something changed (a frame, the camera moving, a resize): the page stays
      // cheap on a station's CPU, where WebGL may be software-rendered.
      const resized = resize(st.view);
      const moved = st.view.controls.update();
      if (fresh || moved || resized) st.view.renderer.render(st.view.scene, st.view.camera);
    }
    if (fresh) {
      stats.shown.push(t);
      if (st.frame.sent_ns > 0) {
        stats.latencies.push((nowNs() - st.frame.sent_ns) / 1e6);
        if (stats.latencies.length > 600) stats.latencies.shift();
      }
      window.viewerStats.frames += 1;
      if (window.viewerStats.firstDrawnMs === null) window.viewerStats.firstDrawnMs = t;
      window.viewerStats.lastDrawnMs = t;
    }
  }
  while (stats.shown.length && stats.shown[0] < t - 5000) stats.shown.shift();
  requestAnimationFrame(loop);
}

function publishStats() {
  const t = performance.now();
  const recent = stats.shown.filter((x) => x > t - 5000);
  const span = recent.length > 1 ? (recent[recent.length - 1] - recent[0]) / 1000 : 0;
  const ups = span > 0 ? (recent.length - 1) / span : 0;
  const lat = stats.latencies.slice(-100);
  Object.assign(window.viewerStats, { updatesPerSecond: ups, latencyP50Ms: percentile(lat, 0.5),
    latencyP95Ms: percentile(lat, 0.95), latencies: [...stats.latencies] });
  $("#view-rate").textContent = fmt(ups, 1);
  $("#view-latency").textContent = lat.length ? `p50 ${fmt(percentile(lat, 0.5), 0)} ms · p95 ${fmt(percentile(lat, 0.95), 0)} ms` : "-";
}

function showStreamStats(s) {
  $("#stream-stats").textContent = `${s.received} received · ${s.lost} lost · ${s.unreadable} unreadable · ${s.coalesced} coalesced`;
}

// ------------------------------------------------------------------ sources
function live() {
  const badge = $("#connection");
  const es = new EventSource("/api/events");
  es.addEventListener("open", () => { badge.dataset.state = "live"; badge.textContent = "live"; checkStale(); });
  setInterval(checkStale, 250);
  es.addEventListener("error", () => { badge.dataset.state = "error"; badge.textContent = "reconnecting"; });
  es.addEventListener("frame", (ev) => show(JSON.parse(ev.data)));
  es.addEventListener("stats", (ev) => showStreamStats(JSON.parse(ev.data)));
}

async function recording() {
  const badge = $("#connection");
  badge.dataset.state = "recording";
  badge.textContent = "recording";
  const { frames } = await (await fetch("/api/recording")).json();
  $("#stream-stats").textContent = `${frames.length} recorded ticks`;
  const bar = $("#playback"), slider = $("#slider"), button = $("#play"), label = $("#playtime"), speed = $("#speed");
  bar.hidden = false;
  slider.max = String(frames.length - 1);
  const t0 = frames[0].t_ns;
  let index = 0, playing = true, last = performance.now(), clock = 0;
  const seek = (i) => {
    index = Math.max(0, Math.min(frames.length - 1, i));
    slider.value = String(index);
    clock = (frames[index].t_ns - t0) / 1e9;
    label.textContent = `${fmt(clock, 1)} s / ${fmt((frames[frames.length - 1].t_ns - t0) / 1e9, 1)} s · tick ${frames[index].tick}`;
    show(frames[index]);
  };
  slider.addEventListener("input", () => seek(Number(slider.value)));
  button.addEventListener("click", () => { playing = !playing; button.textContent = playing ? "Pause" : "Play"; last = performance.now(); });
  const step = () => {
    const t = performance.now();
    if (playing) {
      clock += ((t - last) / 1000) * Number(speed.value);
      let i = index;
      while (i + 1 < frames.length && (frames[i + 1].t_ns - t0) / 1e9 <= clock) i += 1;
      if (i !== index) seek(i);
      if (index === frames.length - 1) { playing = false; button.textContent = "Play"; }
    }
    last = t;
    requestAnimationFrame(step);
  };
  seek(0);
  requestAnimationFrame(step);
}

async function main() {
  config = await (await fetch("/api/config")).json();
  $("#source").textContent = config.mode === "live" ? `pose stream ${config.source}` : `recording ${config.source}`;
  requestAnimationFrame(loop);
  setInterval(publishStats, 500);
  if (config.mode === "live") live();
  else await recording();
}

main().catch((err) => {
  const badge = $("#connection");
  badge.dataset.state = "error";
  badge.textContent = `error: ${err}`;
  console.error(err);
});
