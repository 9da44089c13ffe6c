// The viewer's live mode: plays a keypoint sequence through the server's WebSocket /stream in real time.
// Frames go out at the chosen rate whatever the server keeps up with; the server meshes the newest frame
// it has and reports the frames it skipped, so what is measured here is what a hand tracker would see.

const STATS_WINDOW_MS = 1000;

function decodeArray(base64, ArrayType) {
  const bytes = Uint8Array.from(atob(base64), (character) => character.charCodeAt(0));
  return new ArrayType(bytes.buffer); // little-endian, as every browser platform is
}

function percentile(values, q) {
  if (!values.length) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((q / 100) * sorted.length))];
}

export class LiveStream {
  // frames: (T,21,3) keypoints; options: { hand, joint_order, resolution, smooth, fps, loop, token };
  // onMesh({ positions, normals, indices, keypoints, reply }), onStats(stats), onEnd(reason, clean).
  constructor(frames, options, { onMesh, onStats, onEnd }) {
    this.frames = frames;
    this.options = options;
    this.onMesh = onMesh;
    this.onStats = onStats;
    this.onEnd = onEnd;
    this.sentAt = new Map(); // frame_id -> performance.now() when sent
    this.received = []; // arrival times within the stats window
    this.roundTrips = [];
    this.serverMs = [];
    this.totals = { sent: 0, meshed: 0, skipped: 0, seeded: 0, errors: 0 };
    this.nextFrame = 0;
    this.lastError = "";
    this.stopped = false;
  }

  start() {
    const { token } = this.options;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const query = new URLSearchParams({ encoding: "base64" });
    if (token) query.set("token", token); // a browser cannot set the Authorization header on a WebSocket
    this.socket = new WebSocket(`${scheme}//${location.host}/stream?${query}`);
    this.socket.addEventListener("open", () => this.scheduleSends());
    this.socket.addEventListener("message", (event) => this.receive(JSON.parse(event.data)));
    this.socket.addEventListener("close", (event) => this.closed(event));
  }

  stop() {
    this.stopped = true;
    clearInterval(this.timer);
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000, "stopped by the viewer");
  }

  scheduleSends() {
    this.timer = setInterval(() => this.send(), 1000 / this.options.fps);
    this.send();
  }

  send() {
    if (this.socket.readyState !== WebSocket.OPEN) return;
    if (this.nextFrame >= this.frames.length && !this.options.loop) {
      clearInterval(this.timer);
      return;
    }
    const frameId = this.nextFrame++;
    const { hand, joint_order, resolution, smooth } = this.options;
    const keypoints = this.frames[frameId % this.frames.length];
    this.sentAt.set(frameId, performance.now());
    this.totals.sent += 1;
    this.socket.send(JSON.stringify({ frame_id: frameId, keypoints, hand, joint_order, resolution, smooth }));
  }

  receive(reply) {
    const now = performance.now();
    this.totals.skipped += reply.skipped_frames || 0;
    for (const id of this.sentAt.keys()) if (id < reply.frame_id) this.sentAt.delete(id); // skipped ones
    const sent = this.sentAt.get(reply.frame_id);
    this.sentAt.delete(reply.frame_id);
    if (reply.error) {
      this.totals.errors += 1;
      this.lastError = reply.error.detail;
    } else {
      this.totals.meshed += 1;
      if (reply.seeded) this.totals.seeded += 1;
      this.received = [...this.received.filter((time) => now - time < STATS_WINDOW_MS), now];
      if (sent !== undefined) this.roundTrips = [...this.roundTrips.slice(-99), now - sent];
      this.serverMs = [...this.serverMs.slice(-99), reply.server_ms];
      this.onMesh({
        positions: decodeArray(reply.vertices, Float32Array),
        normals: decodeArray(reply.normals, Float32Array),
        indices: decodeArray(reply.faces, Uint32Array),
        keypoints: this.frames[reply.frame_id % this.frames.length],
        reply,
      });
    }
    this.onStats(this.stats());
    const finished = !this.options.loop && this.nextFrame >= this.frames.length && this.sentAt.size === 0;
    if (finished) this.socket.close(1000, "sequence played");
  }

  stats() {
    return {
      ...this.totals,
      framesPerSecond: this.received.length * (1000 / STATS_WINDOW_MS),
      roundTripP50: percentile(this.roundTrips, 50),
      roundTripP99: percentile(this.roundTrips, 99),
      serverP50: percentile(this.serverMs, 50),
      lastError: this.lastError,
    };
  }

  closed(event) {
    clearInterval(this.timer);
    const clean = event.code === 1000 || this.stopped;
    const reason = event.reason || (event.code === 1006 ? "connection lost" : `closed (${event.code})`);
    this.onEnd(reason, clean, event.code);
  }
}
