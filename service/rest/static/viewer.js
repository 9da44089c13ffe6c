// HALO viewer: meshes, sequences, live streams and grasps from this server, drawn with the vendored three.js.
// Every request goes to this origin; the server's error messages start with the field they name, and
// are shown next to that field.
import * as THREE from "./vendor/three/three.module.min.js";
import { LiveStream } from "./live.js";

const SKIN = 0xe0a982;
const OBJECT_COLOUR = 0x8fa3bf;
const SEQUENCE_BATCH = 8; // hands per mesh request while loading a sequence
const SEQUENCE_REQUESTS_IN_FLIGHT = 2;
const GRASP_HUES = [0.07, 0.55, 0.3, 0.8, 0.13, 0.45, 0.95, 0.65];

const $ = (selector) => document.querySelector(selector);
const state = {
  config: null,
  token: sessionStorage.getItem("halo-token") || "",
  retry: null, // the action a 401 interrupted, run again once a token is given
  keypoints: null, // the keypoints of the hand on screen (one frame of a sequence)
  frames: [], // a sequence: keypoints per frame
  frameGeometries: [],
  frame: 0,
  playing: false,
  grasps: [],
  selectedGrasp: 0,
  live: null, // the LiveStream playing, if any
};

// ------------------------------------------------------------------ requests and errors

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function api(path, { json, form, accept } = {}) {
  const headers = {};
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (accept) headers.Accept = accept;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form) {
    body = form;
  }
  const started = performance.now();
  const response = await fetch(path, { method: "POST", headers, body });
  const roundTripMs = performance.now() - started;
  const timing = /dur=([\d.]+)/.exec(response.headers.get("server-timing") || "");
  const serverMs = timing ? Number(timing[1]) : NaN;
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      detail = (await response.json()).detail || detail;
    } catch {
      // not a JSON error body: keep the status line
    }
    if (response.status === 401) $("#token-form").hidden = false;
    throw new ApiError(response.status, detail);
  }
  return { response, serverMs, roundTripMs };
}

function fieldOf(detail) {
  // "keypoints (hand 0): ..." / "hands[3].keypoints: ..." / "object.faces: ..." -> the field the page shows
  const head = detail.split(":", 1)[0].replace(/\s*\(.*\)$/, "");
  const last = head.split(".").pop().replace(/\[\d+\]$/, "");
  return head.startsWith("object") ? "object" : last;
}

function clearErrors(scope) {
  scope.querySelectorAll(".error").forEach((element) => (element.textContent = ""));
}

function showError(scope, error) {
  const detail = error instanceof ApiError ? error.message : `request: ${error.message}`;
  if (error instanceof ApiError && error.status === 401) {
    $('[data-error-for="authorization"]').textContent = detail;
    $("#token").focus();
  }
  const target =
    scope.querySelector(`[data-error-for="${fieldOf(detail)}"]`) || scope.querySelector('[data-error-for="request"]');
  target.textContent = detail;
  setStatus(detail);
}

function setStatus(text) {
  $("#status").textContent = text;
}

async function guarded(scope, action) {
  clearErrors(scope);
  try {
    await action();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) state.retry = () => guarded(scope, action);
    showError(scope, error);
  }
}

function formatMs(ms) {
  return Number.isFinite(ms) ? `${ms.toFixed(0)} ms` : "?";
}

// ------------------------------------------------------------------ scene

const view = $("#view");

function softwareRendered() {
  // Multisampling costs a software rasteriser (SwiftShader, llvmpipe) more than half of each frame.
  const gl = document.createElement("canvas").getContext("webgl2");
  const info = gl?.getExtension("WEBGL_debug_renderer_info");
  const name = info ? gl.getParameter(info.UNMASKED_RENDERER_WEBGL) : "";
  gl?.getExtension("WEBGL_lose_context")?.loseContext();
  return /swiftshader|llvmpipe|software/i.test(name);
}

const renderer = new THREE.WebGLRenderer({ antialias: !softwareRendered() });
renderer.setPixelRatio(window.devicePixelRatio);
view.appendChild(renderer.domElement);
const scene = new THREE.Scene();
scene.background = new THREE.Color(0x20242c);
const camera = new THREE.PerspectiveCamera(35, 1, 0.001, 10);
scene.add(new THREE.HemisphereLight(0xffffff, 0x404050, 1.6));
const keyLight = new THREE.DirectionalLight(0xffffff, 1.8);
keyLight.position.set(0.5, 1, 0.8);
camera.add(keyLight);
scene.add(camera);

const handMaterial = new THREE.MeshStandardMaterial({ color: SKIN, roughness: 0.7, side: THREE.DoubleSide });
const handMesh = new THREE.Mesh(new THREE.BufferGeometry(), handMaterial);
scene.add(handMesh);
const overlay = new THREE.Group();
const jointMaterial = new THREE.MeshBasicMaterial({ color: 0x2fd0ff, depthTest: false, transparent: true });
const joints = new THREE.InstancedMesh(new THREE.SphereGeometry(0.003, 10, 8), jointMaterial, 21);
const boneMaterial = new THREE.LineBasicMaterial({ color: 0xffffff, depthTest: false, transparent: true });
const bones = new THREE.LineSegments(new THREE.BufferGeometry(), boneMaterial);
bones.geometry.setAttribute("position", new THREE.Float32BufferAttribute(new Float32Array(20 * 2 * 3), 3));
joints.renderOrder = bones.renderOrder = 2;
joints.frustumCulled = bones.frustumCulled = false; // they move every frame of a sequence
overlay.add(joints, bones);
scene.add(overlay);
const graspGroup = new THREE.Group();
scene.add(graspGroup);
// translucent, so hands behind or inside the object stay visible
const objectMaterial = new THREE.MeshStandardMaterial({
  color: OBJECT_COLOUR,
  roughness: 0.5,
  transparent: true,
  opacity: 0.55,
  depthWrite: false,
});
const objectMesh = new THREE.Mesh(new THREE.BufferGeometry(), objectMaterial);
graspGroup.add(objectMesh);
const graspHands = new THREE.Group();
graspGroup.add(graspHands);
graspGroup.visible = false;

// Orbit controls: drag to rotate around the target, right-drag / shift-drag to pan, wheel to zoom.
const orbit = { target: new THREE.Vector3(), radius: 0.4, theta: 0.6, phi: 1.1 };

function placeCamera() {
  const { target, radius, theta, phi } = orbit;
  camera.position.set(
    target.x + radius * Math.sin(phi) * Math.sin(theta),
    target.y + radius * Math.cos(phi),
    target.z + radius * Math.sin(phi) * Math.cos(theta),
  );
  camera.lookAt(target);
  requestRender();
}

function frameObject(object) {
  const box = new THREE.Box3().setFromObject(object);
  if (box.isEmpty()) return;
  const sphere = box.getBoundingSphere(new THREE.Sphere());
  orbit.target.copy(sphere.center);
  orbit.radius = (sphere.radius / Math.sin(THREE.MathUtils.degToRad(camera.fov / 2))) * 1.1;
  placeCamera();
}

let drag = null;
renderer.domElement.addEventListener("pointerdown", (event) => {
  drag = { x: event.clientX, y: event.clientY, pan: event.button === 2 || event.shiftKey };
  renderer.domElement.setPointerCapture(event.pointerId);
});
renderer.domElement.addEventListener("pointermove", (event) => {
  if (!drag) return;
  const dx = event.clientX - drag.x;
  const dy = event.clientY - drag.y;
  drag.x = event.clientX;
  drag.y = event.clientY;
  if (drag.pan) {
    const scale = (2 * orbit.radius * Math.tan(THREE.MathUtils.degToRad(camera.fov / 2))) / view.clientHeight;
    const right = new THREE.Vector3().setFromMatrixColumn(camera.matrix, 0).multiplyScalar(-dx * scale);
    const up = new THREE.Vector3().setFromMatrixColumn(camera.matrix, 1).multiplyScalar(dy * scale);
    orbit.target.add(right).add(up);
  } else {
    orbit.theta -= dx * 0.01;
    orbit.phi = THREE.MathUtils.clamp(orbit.phi - dy * 0.01, 0.05, Math.PI - 0.05);
  }
  placeCamera();
});
renderer.domElement.addEventListener("pointerup", () => (drag = null));
renderer.domElement.addEventListener("contextmenu", (event) => event.preventDefault());
renderer.domElement.addEventListener(
  "wheel",
  (event) => {
    event.preventDefault();
    orbit.radius = THREE.MathUtils.clamp(orbit.radius * Math.exp(event.deltaY * 0.001), 0.02, 5);
    placeCamera();
  },
  { passive: false },
);

function resize() {
  const width = view.clientWidth;
  const height = view.clientHeight;
  renderer.setSize(width, height, false);
  camera.aspect = width / Math.max(height, 1);
  camera.updateProjectionMatrix();
  requestRender();
}
new ResizeObserver(resize).observe(view);

function geometryOf(mesh) {
  const geometry = new THREE.BufferGeometry();
  geometry.setAttribute("position", new THREE.BufferAttribute(new Float32Array(mesh.vertices.flat()), 3));
  geometry.setIndex(new THREE.BufferAttribute(new Uint32Array(mesh.faces.flat()), 1));
  geometry.computeVertexNormals();
  return geometry;
}

function showOverlay(keypoints, order = $("#joint-order").value) {
  const matrix = new THREE.Matrix4();
  keypoints.forEach((point, index) => joints.setMatrixAt(index, matrix.makeTranslation(...point)));
  joints.instanceMatrix.needsUpdate = true;
  const ends = bones.geometry.getAttribute("position");
  state.config.joint_orders[order].forEach(([parent, child], bone) => {
    ends.setXYZ(2 * bone, ...keypoints[parent]);
    ends.setXYZ(2 * bone + 1, ...keypoints[child]);
  });
  ends.needsUpdate = true;
  requestRender();
}

function showHand(geometry, keypoints) {
  state.keypoints = keypoints;
  handMesh.geometry = geometry;
  showOverlay(keypoints);
  requestRender();
}

// Frames are drawn on demand (a change, or a sequence playing), so an idle page costs no CPU.
let renderQueued = false;
let lastFrameTime = 0;
let shownFrames = [];

function requestRender() {
  if (!renderQueued) {
    renderQueued = true;
    requestAnimationFrame(render);
  }
}

function render(now) {
  renderQueued = false;
  if (state.playing && state.frameGeometries.length) {
    const interval = 1000 / Number($("#fps").value);
    if (now - lastFrameTime >= interval) {
      lastFrameTime = now - ((now - lastFrameTime) % interval);
      showFrame((state.frame + 1) % state.frames.length);
      shownFrames = [...shownFrames.filter((time) => now - time < 1000), now];
      $("#fps-measured").textContent = `${shownFrames.length} frames/s`;
    }
    requestRender();
  }
  renderer.render(scene, camera);
}

// ------------------------------------------------------------------ the hand tab

const handTab = $("#tab-hand");

function handOptions() {
  return { joint_order: $("#joint-order").value, hand: $("#hand").value, resolution: Number($("#resolution").value) };
}

function parseKeypointsText(text) {
  let data;
  try {
    data = JSON.parse(text);
  } catch (error) {
    throw new ApiError(0, `keypoints: not valid JSON (${error.message})`);
  }
  if (data && !Array.isArray(data) && typeof data === "object") {
    if (data.joint_order) $("#joint-order").value = data.joint_order;
    if (data.hand) $("#hand").value = data.hand;
    data = data.keypoints;
  }
  if (!Array.isArray(data)) throw new ApiError(0, "keypoints: expected a JSON array (21,3) or (T,21,3)");
  return data;
}

function isSequence(data) {
  return Array.isArray(data[0]) && Array.isArray(data[0][0]);
}

async function meshOne(keypoints) {
  const { response, serverMs, roundTripMs } = await api("/mesh", { json: { keypoints, ...handOptions() } });
  const mesh = await response.json();
  $("#mesh-timing").textContent = `server ${formatMs(serverMs)}, round trip ${formatMs(roundTripMs)}`;
  return { geometry: geometryOf(mesh), resolution: mesh.resolution };
}

async function meshKeypointsText() {
  const data = parseKeypointsText($("#keypoints").value);
  stopSequence();
  if (isSequence(data)) {
    await loadSequence(data);
    return;
  }
  $("#sequence").hidden = true;
  setStatus("Meshing the hand…");
  const { geometry, resolution } = await meshOne(data);
  const previous = handMesh.geometry;
  showHand(geometry, data);
  previous.dispose();
  frameObject(handMesh);
  setStatus(`Hand meshed at resolution ${resolution} (${geometry.index.count / 3} faces).`);
}

function stopSequence() {
  state.playing = false;
  state.frames = [];
  state.frameGeometries.forEach((geometry) => geometry.dispose());
  state.frameGeometries = [];
  $("#play-button").textContent = "Play";
}

async function loadSequence(frames) {
  const options = handOptions();
  setStatus(`Meshing ${frames.length} frames…`);
  const batch = Math.min(SEQUENCE_BATCH, state.config.max_hands);
  state.frames = frames;
  const geometries = new Array(frames.length);
  $("#sequence").hidden = false;
  $("#play-button").disabled = true;
  $("#frame-slider").disabled = true;
  $("#frame-slider").max = String(frames.length - 1);
  let loaded = 0;
  let serverMs = 0;
  const started = performance.now();
  const starts = [];
  for (let start = 0; start < frames.length; start += batch) starts.push(start);

  async function fetchBatch(start) {
    const hands = frames
      .slice(start, start + batch)
      .map((keypoints) => ({ keypoints, joint_order: options.joint_order, hand: options.hand }));
    let answer;
    try {
      answer = await api("/mesh", { json: { hands, resolution: options.resolution } });
    } catch (error) {
      // "hands[3].keypoints: ..." names the hand within this batch: say which frame it is
      const renamed = error.message.replace(/^hands\[(\d+)\]\.(\w+)/, (_, i, field) => `${field} (frame ${start + Number(i)})`);
      throw new ApiError(error.status ?? 0, renamed);
    }
    const { meshes } = await answer.response.json();
    meshes.forEach((mesh, offset) => (geometries[start + offset] = geometryOf(mesh)));
    loaded += meshes.length;
    serverMs += answer.serverMs;
    $("#sequence-progress").textContent = `loaded ${loaded} / ${frames.length} frames`;
    if (start === 0) {
      showHand(geometries[0], frames[0]);
      frameSequence(frames);
    }
  }

  async function worker() {
    while (starts.length && state.frames === frames) await fetchBatch(starts.shift());
  }
  try {
    await Promise.all(Array.from({ length: SEQUENCE_REQUESTS_IN_FLIGHT }, worker));
  } catch (error) {
    if (state.frames === frames) state.frames = []; // stops the other worker
    throw error;
  }
  if (state.frames !== frames) return; // replaced by another request meanwhile
  state.frameGeometries = geometries;
  const seconds = (performance.now() - started) / 1000;
  $("#sequence-progress").textContent =
    `${frames.length} frames loaded in ${seconds.toFixed(1)} s (server ${(serverMs / 1000).toFixed(1)} s in ` +
    `${Math.ceil(frames.length / batch)} requests of up to ${batch} hands)`;
  $("#mesh-timing").textContent = `${(seconds * 1000 / frames.length).toFixed(0)} ms per frame`;
  $("#play-button").disabled = false;
  $("#frame-slider").disabled = false;
  showFrame(0);
  setStatus(`Sequence of ${frames.length} frames ready: press Play or drag the slider.`);
}

function frameSequence(frames) {
  // frame the whole sequence's keypoints, so the camera does not jump while it plays
  const box = new THREE.Box3().setFromPoints(frames.flat().map((point) => new THREE.Vector3(...point)));
  const sphere = box.getBoundingSphere(new THREE.Sphere());
  orbit.target.copy(sphere.center);
  orbit.radius = ((sphere.radius + 0.03) / Math.sin(THREE.MathUtils.degToRad(camera.fov / 2))) * 1.1;
  placeCamera();
}

function showFrame(index) {
  state.frame = index;
  showHand(state.frameGeometries[index], state.frames[index]);
  $("#frame-slider").value = String(index);
  $("#frame-label").textContent = `frame ${index + 1} / ${state.frames.length}`;
}

async function download(format) {
  if (!state.keypoints) throw new ApiError(0, "keypoints: mesh a hand first");
  const { response } = await api("/mesh", { json: { keypoints: state.keypoints, ...handOptions(), format } });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = `hand.${format}`;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

// ------------------------------------------------------------------ the grasps tab

const graspTab = $("#tab-grasps");
let objectForGrasps = null; // {vertices, faces} in metres, as the grasp model will read it

function builtInObject(name) {
  // Closed shapes in metres; the mug is a body and a handle that overlap (the server counts them as one solid).
  const shapes = {
    box: () => [new THREE.BoxGeometry(0.06, 0.1, 0.04)],
    can: () => [new THREE.CylinderGeometry(0.033, 0.033, 0.11, 48)],
    ball: () => [new THREE.SphereGeometry(0.04, 48, 24)],
    mug: () => [
      new THREE.CylinderGeometry(0.04, 0.04, 0.095, 48),
      new THREE.TorusGeometry(0.028, 0.007, 12, 32).translate(0.045, 0, 0),
    ],
  };
  const vertices = [];
  const faces = [];
  for (const geometry of shapes[name]()) {
    const offset = vertices.length;
    const position = geometry.getAttribute("position");
    for (let i = 0; i < position.count; i++) vertices.push([position.getX(i), position.getY(i), position.getZ(i)]);
    const index = geometry.getIndex().array;
    for (let i = 0; i < index.length; i += 3) faces.push([index[i] + offset, index[i + 1] + offset, index[i + 2] + offset]);
    geometry.dispose();
  }
  return { vertices, faces };
}

async function chooseObject() {
  const choice = $("#object-choice").value;
  if (choice === "upload") {
    const file = $("#object-file").files[0];
    if (!file) {
      objectForGrasps = null;
      throw new ApiError(0, "file: choose an .obj, .ply, .stl or .glb file");
    }
    const form = new FormData();
    form.append("file", file);
    const { response } = await api("/object", { form });
    objectForGrasps = await response.json();
  } else {
    objectForGrasps = builtInObject(choice);
  }
  showObject(objectForGrasps);
  setStatus(`Object: ${objectForGrasps.vertices.length} vertices, ${objectForGrasps.faces.length} faces.`);
}

function showObject(object) {
  objectMesh.geometry.dispose();
  objectMesh.geometry = geometryOf(object);
  clearGrasps();
  showGraspMode();
  frameObject(objectMesh);
}

function clearGrasps() {
  graspHands.children.forEach((hand) => hand.geometry.dispose());
  graspHands.clear();
  state.grasps = [];
  $("#metrics thead").replaceChildren();
  $("#metrics tbody").replaceChildren();
}

function graspColour(index) {
  return new THREE.Color().setHSL(GRASP_HUES[index % GRASP_HUES.length], 0.55, 0.62);
}

async function sampleGrasps() {
  if (!objectForGrasps) await chooseObject();
  const request = {
    object: objectForGrasps,
    num_samples: Number($("#num-samples").value),
    seed: Number($("#seed").value),
    refine: $("#refine").checked,
    resolution: Number($("#grasp-resolution").value),
    physics: $("#physics").checked,
    rank: $("#rank-stability").checked ? "stability" : "none",
  };
  setStatus(`Sampling ${request.num_samples} grasps…`);
  $("#grasp-button").disabled = true;
  try {
    const { response, serverMs, roundTripMs } = await api("/grasps", { json: request });
    const { grasps } = await response.json();
    clearGrasps();
    state.grasps = grasps;
    grasps.forEach((grasp, index) => {
      const material = new THREE.MeshStandardMaterial({ color: graspColour(index), roughness: 0.7, side: THREE.DoubleSide });
      graspHands.add(new THREE.Mesh(geometryOf(grasp.mesh), material));
    });
    $("#grasp-timing").textContent = `server ${formatMs(serverMs)}, round trip ${formatMs(roundTripMs)}`;
    fillMetrics(grasps);
    selectGrasp(0);
    frameObject(graspGroup);
    const physics = request.physics || request.rank === "stability";
    const stable = grasps.filter((grasp) => grasp.metrics.stable).length;
    const checked = physics ? `, physics on: ${stable} stable${request.rank === "stability" ? ", most stable first" : ""}` : "";
    setStatus(`${grasps.length} grasps (refine ${request.refine ? "on" : "off"}, seed ${request.seed}${checked}).`);
  } finally {
    $("#grasp-button").disabled = false;
  }
}

const METRIC_LABELS = {
  penetration_volume_cm3: "pen. cm³",
  max_penetration_depth_mm: "depth mm",
  hand_object_distance_mm: "gap mm",
  contact: "contact",
  refined: "refined",
  sim_displacement_cm: "displ. cm",
  sim_displacement_worst_cm: "worst cm",
  sim_directions_held: "held dirs",
  sim_settle_cm: "settle cm",
  stable: "stable",
};
const YES_NO_METRICS = new Set(["contact", "refined", "stable"]);
const COUNT_METRICS = new Set(["sim_directions_held"]);

function fillMetrics(grasps) {
  const names = Object.keys(grasps[0]?.metrics || {});
  const head = document.createElement("tr");
  for (const text of ["", "#", ...names.map((name) => METRIC_LABELS[name] || name)]) {
    const cell = document.createElement("th");
    cell.textContent = text;
    head.append(cell);
  }
  $("#metrics thead").replaceChildren(head);
  const rows = grasps.map((grasp, index) => {
    const row = document.createElement("tr");
    const swatch = document.createElement("td");
    swatch.className = "swatch";
    swatch.style.backgroundColor = `#${graspColour(index).getHexString()}`;
    const number = document.createElement("td");
    number.textContent = String(index + 1);
    row.append(swatch, number);
    for (const name of names) {
      const cell = document.createElement("td");
      const value = grasp.metrics[name];
      cell.textContent = YES_NO_METRICS.has(name) ? (value ? "yes" : "no")
        : value.toFixed(COUNT_METRICS.has(name) ? 0 : 2);
      row.append(cell);
    }
    row.addEventListener("click", () => selectGrasp(index));
    return row;
  });
  $("#metrics tbody").replaceChildren(...rows);
}

function selectGrasp(index) {
  if (!state.grasps.length) return;
  state.selectedGrasp = (index + state.grasps.length) % state.grasps.length;
  [...$("#metrics tbody").children].forEach((row, i) => row.classList.toggle("selected", i === state.selectedGrasp));
  showGraspMode();
}

function showGraspMode() {
  requestRender();
  const all = $("#show-all").checked;
  graspHands.children.forEach((hand, i) => (hand.visible = all || i === state.selectedGrasp));
  const grasp = state.grasps[state.selectedGrasp];
  overlay.visible = $("#overlay").checked && Boolean(grasp) && !all;
  if (grasp && !all) showOverlay(grasp.keypoints, "mano"); // grasps come back in mano order
}

// ------------------------------------------------------------------ wiring

function selectTab(name) {
  for (const button of document.querySelectorAll("#tabs button")) {
    button.setAttribute("aria-selected", String(button.dataset.tab === name));
  }
  requestRender();
  handTab.hidden = name !== "hand";
  graspTab.hidden = name !== "grasps";
  liveTab.hidden = name !== "live";
  if (name !== "live") stopLive();
  else stopPlaying();
  const grasps = name === "grasps";
  graspGroup.visible = grasps;
  handMesh.visible = !grasps && $("#show-mesh").checked;
  if (grasps) {
    stopPlaying();
    if (!objectForGrasps) guarded(graspTab, chooseObject);
    else showGraspMode();
    frameObject(graspGroup);
  } else {
    overlay.visible = $("#overlay").checked;
    if (state.keypoints) showOverlay(state.keypoints);
    frameObject(handMesh);
  }
}

// ------------------------------------------------------------------ the live tab

const liveTab = $("#tab-live");

async function liveFrames() {
  const source = $("#live-source").value;
  if (source === "sample") {
    const { sample_sequence: sequence } = state.config;
    $("#hand").value = sequence.hand;
    $("#joint-order").value = sequence.joint_order;
    return sequence.keypoints;
  }
  let text;
  if (source === "upload") {
    const file = $("#live-file").files[0];
    if (!file) throw new ApiError(0, "sequence: choose a JSON file of (T,21,3) keypoints");
    text = await file.text();
  } else {
    text = $("#keypoints").value;
  }
  const data = parseKeypointsText(text);
  if (!isSequence(data)) throw new ApiError(0, "sequence: expected (T,21,3) keypoints, got one hand");
  return data;
}

function showLiveStats(stats) {
  const rows = [
    ["meshed", `${stats.framesPerSecond.toFixed(0)} frames/s`],
    ["frames", `${stats.sent} sent, ${stats.meshed} meshed, ${stats.skipped} skipped`],
    ["seeded", stats.meshed ? `${((100 * stats.seeded) / stats.meshed).toFixed(0)} % of frames` : "-"],
    ["server", `${formatMs(stats.serverP50)} (median)`],
    ["round trip", `${formatMs(stats.roundTripP50)} median, ${formatMs(stats.roundTripP99)} p99`],
  ];
  $("#live-stats").replaceChildren(
    ...rows.flatMap(([term, value]) => [
      Object.assign(document.createElement("dt"), { textContent: term }),
      Object.assign(document.createElement("dd"), { textContent: value }),
    ]),
  );
  Object.assign(document.body.dataset, { liveMeshed: stats.meshed, liveSkipped: stats.skipped, liveFps: stats.framesPerSecond });
  if (stats.lastError) showError(liveTab, new ApiError(422, stats.lastError));
}

function showLiveMesh({ positions, normals, indices, keypoints }) {
  const geometry = new THREE.BufferGeometry();
  geometry.setAttribute("position", new THREE.BufferAttribute(positions, 3));
  geometry.setAttribute("normal", new THREE.BufferAttribute(normals, 3)); // the server's, for smooth shading
  geometry.setIndex(new THREE.BufferAttribute(indices, 1));
  const previous = handMesh.geometry;
  showHand(geometry, keypoints);
  previous.dispose();
}

async function startLive() {
  stopLive();
  const frames = await liveFrames();
  frameSequence(frames);
  const options = {
    ...handOptions(),
    resolution: Number($("#live-resolution").value),
    smooth: Number($("#live-smooth").value),
    fps: Number($("#live-fps").value),
    loop: $("#live-loop").checked,
    token: state.token,
  };
  const live = new LiveStream(frames, options, {
    onMesh: showLiveMesh,
    onStats: showLiveStats,
    onEnd: (reason, clean, code) => {
      if (state.live !== live) return;
      state.live = null;
      $("#live-button").textContent = "Start";
      document.body.dataset.liveEnded = reason;
      if (code === 1008) $("#token-form").hidden = false;
      if (clean) setStatus(`Live stream ended: ${reason}.`);
      else showError(liveTab, new ApiError(0, `live: ${reason}`));
    },
  });
  state.live = live;
  for (const key of ["liveMeshed", "liveSkipped", "liveFps", "liveEnded"]) delete document.body.dataset[key];
  $("#live-button").textContent = "Stop";
  setStatus(`Streaming ${frames.length} frames at ${options.fps} frames/s…`);
  live.start();
}

function stopLive() {
  if (!state.live) return;
  const live = state.live;
  state.live = null;
  live.stop();
  $("#live-button").textContent = "Start";
  const { meshed, skipped } = live.stats();
  setStatus(`Live stream stopped: ${meshed} frames meshed, ${skipped} skipped.`);
}

function stopPlaying() {
  state.playing = false;
  $("#play-button").textContent = "Play";
}

function fillSelect(select, values, selected) {
  select.replaceChildren(...values.map((value) => new Option(String(value), String(value), false, value === selected)));
}

async function start() {
  const response = await fetch("/viewer/config.json");
  state.config = await response.json();
  const { config } = state;
  fillSelect($("#joint-order"), Object.keys(config.joint_orders), config.sample.joint_order);
  fillSelect($("#resolution"), config.resolutions, config.default_resolution);
  fillSelect($("#grasp-resolution"), config.resolutions, config.resolutions[0]);
  fillSelect($("#live-resolution"), config.resolutions, config.resolutions[0]);
  $("#num-samples").max = String(config.max_grasp_samples);
  $("#hand").value = config.sample.hand;
  $("#keypoints").value = JSON.stringify(config.sample.keypoints);

  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => selectTab(button.dataset.tab));
  }
  $("#mesh-button").addEventListener("click", () => guarded(handTab, meshKeypointsText));
  $("#keypoints-file").addEventListener("change", async () => {
    const file = $("#keypoints-file").files[0];
    if (!file) return;
    $("#keypoints").value = await file.text();
    guarded(handTab, meshKeypointsText);
  });
  for (const button of document.querySelectorAll("[data-download]")) {
    button.addEventListener("click", () => guarded(handTab, () => download(button.dataset.download)));
  }
  $("#play-button").addEventListener("click", () => {
    state.playing = !state.playing;
    $("#play-button").textContent = state.playing ? "Pause" : "Play";
    requestRender();
  });
  $("#frame-slider").addEventListener("input", () => {
    stopPlaying();
    showFrame(Number($("#frame-slider").value));
  });
  $("#overlay").addEventListener("change", () => {
    overlay.visible = $("#overlay").checked;
    requestRender();
    if (!graspTab.hidden) showGraspMode();
  });
  $("#show-mesh").addEventListener("change", () => {
    handMesh.visible = $("#show-mesh").checked && handTab.hidden === false;
    graspHands.visible = $("#show-mesh").checked;
    requestRender();
  });
  $("#object-choice").addEventListener("change", () => guarded(graspTab, chooseObject));
  $("#object-file").addEventListener("change", () => {
    $("#object-choice").value = "upload";
    guarded(graspTab, chooseObject);
  });
  $("#grasp-button").addEventListener("click", () => guarded(graspTab, sampleGrasps));
  $("#live-button").addEventListener("click", () => (state.live ? stopLive() : guarded(liveTab, startLive)));
  $("#live-file").addEventListener("change", () => ($("#live-source").value = "upload"));
  $("#show-all").addEventListener("change", showGraspMode);
  $("#prev-grasp").addEventListener("click", () => selectGrasp(state.selectedGrasp - 1));
  $("#next-grasp").addEventListener("click", () => selectGrasp(state.selectedGrasp + 1));
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("#token").value.trim();
    sessionStorage.setItem("halo-token", state.token);
    $('[data-error-for="authorization"]').textContent = "";
    $("#token-form").hidden = true;
    const retry = state.retry;
    state.retry = null;
    if (retry) retry();
  });

  resize();
  placeCamera();
  await guarded(handTab, meshKeypointsText);
  // after the next frame is drawn: the time from opening the page to the first hand on screen
  requestAnimationFrame(() => {
    document.body.dataset.firstHandMs = performance.now().toFixed(0);
    document.body.dataset.ready = "true";
  });
}

start();
