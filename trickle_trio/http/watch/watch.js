// The watch page: the server's channels as they come and go, and a view of one.
//
// Data: GET /_status every second (the same JSON as `trickle-trio status`), with the
// bearer token typed into the page when the server asks for one (401). A channel of
// MPEG-TS plays from GET /{ch}/live through mpegts.js (Media Source Extensions); any
// other channel is shown as a live log of its segments, one GET /{ch}/{seq} each.
// Every URL is relative to the page, so the page works behind a proxy's path prefix.
"use strict";

(function () {
  const POLL_MS = 1000;
  const LOG_KEEP = 200; // log entries kept on screen
  const TEXT_MAX = 4096; // characters of a segment shown
  const RETRY_MS = 2000; // after a player or log error
  const TS_TYPES = new Set(["video/mp2t", "video/mpegts", "video/mp2ts"]);

  const root = new URL("../../", document.baseURI); // the page is at /_/watch/
  const meta = document.querySelector('meta[name="trickle-base-path"]');
  const basePath = ((meta && meta.content) || "/").replace(/^\/+/, "");
  const $ = (id) => document.getElementById(id);

  let token = sessionStorage.getItem("trickle-token") || "";
  const rows = new Map(); // channel name -> {row, cells, bytesIn, at, mime}
  let view = null; // {name, mime, stop} of the channel shown
  let gone = null; // the name of the channel shown last, if it was deleted meanwhile

  const authHeaders = () => (token ? { Authorization: "Bearer " + token } : {});
  const channelURL = (name, tail) =>
    new URL(basePath + encodeURIComponent(name) + "/" + tail, root).href;
  const baseType = (mime) => (mime || "").split(";")[0].trim().toLowerCase();

  function formatRate(bytesPerSecond) {
    if (bytesPerSecond === null) return "–";
    const units = ["B/s", "kB/s", "MB/s", "GB/s"];
    let value = bytesPerSecond;
    let unit = 0;
    while (value >= 1000 && unit < units.length - 1) {
      value /= 1000;
      unit += 1;
    }
    return (unit === 0 ? value.toFixed(0) : value.toFixed(1)) + " " + units[unit];
  }

  function setServer(text, isError) {
    const el = $("server");
    el.textContent = text;
    el.classList.toggle("error", Boolean(isError));
  }

  // -- the channel list ----------------------------------------------------------------

  async function poll() {
    try {
      const response = await fetch(new URL("_status", root), {
        headers: authHeaders(),
        cache: "no-store",
      });
      if (response.status === 401) {
        $("auth").hidden = false;
        setServer(token ? "the token was refused" : "this server needs a token", true);
        return;
      }
      if (!response.ok) {
        setServer("status: HTTP " + response.status, true);
        return;
      }
      $("auth").hidden = !token;
      render(await response.json());
    } catch (error) {
      setServer("server unreachable", true);
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  function render(status) {
    const now = performance.now();
    const seen = new Set();
    const tbody = $("channels").tBodies[0];
    const listing = status.channels.slice().sort((a, b) => a.channel.localeCompare(b.channel));
    for (const channel of listing) {
      seen.add(channel.channel);
      let entry = rows.get(channel.channel);
      if (!entry) {
        entry = addRow(channel.channel);
        entry.row.classList.add("new");
      }
      const rate =
        entry.bytesIn === null ? null : ((channel.bytes_in - entry.bytesIn) * 1000) / (now - entry.at);
      entry.bytesIn = channel.bytes_in;
      entry.at = now;
      entry.mime = channel.mime_type;
      entry.status = channel;
      entry.cells.type.textContent = channel.mime_type || "–";
      entry.cells.seq.textContent = channel.next_seq > 0 ? String(channel.next_seq - 1) : "–";
      entry.cells.rate.textContent = formatRate(rate === null ? null : Math.max(rate, 0));
      entry.cells.pubs.textContent = String(channel.publishers);
      entry.cells.subs.textContent = String(channel.subscribers);
      // Rows in name order; a row is moved only when out of place (moving one restarts
      // its "new" highlight).
      if (tbody.rows[seen.size - 1] !== entry.row) {
        tbody.insertBefore(entry.row, tbody.rows[seen.size - 1] || null);
      }
    }
    for (const [name, entry] of rows) {
      if (!seen.has(name)) {
        entry.row.remove();
        rows.delete(name);
      }
    }
    $("empty").hidden = rows.size > 0;
    const summary = [
      status.channels_open + (status.channels_open === 1 ? " channel" : " channels"),
      status.subscribers_attached + " subscribers",
      status.publishers_attached + " publishers",
    ];
    if (status.draining) summary.push("draining");
    setServer(summary.join(" · "), false);
    refreshView();
  }

  function addRow(name) {
    const row = document.createElement("tr");
    row.dataset.channel = name;
    row.addEventListener("animationend", () => row.classList.remove("new"));
    const cells = {};
    for (const key of ["name", "type", "seq", "rate", "pubs", "subs"]) {
      const cell = document.createElement("td");
      if (["seq", "rate", "pubs", "subs"].includes(key)) cell.className = "num";
      cell.dataset.field = key;
      row.appendChild(cell);
      cells[key] = cell;
    }
    const link = document.createElement("a");
    link.href = "#" + encodeURIComponent(name);
    link.textContent = name;
    cells.name.appendChild(link);
    row.addEventListener("click", () => {
      location.hash = encodeURIComponent(name);
    });
    const entry = { row, cells, bytesIn: null, at: 0, mime: "", status: null };
    rows.set(name, entry);
    return entry;
  }

  // -- the view of one channel -----------------------------------------------------------

  function selectedName() {
    const hash = location.hash.slice(1);
    if (!hash) return null;
    try {
      return decodeURIComponent(hash);
    } catch (error) {
      return null;
    }
  }

  function note(text) {
    $("view-note").textContent = text;
  }

  function refreshView() {
    const name = selectedName();
    for (const [other, entry] of rows) entry.row.classList.toggle("selected", other === name);
    if (name === null) {
      stopView();
      $("view").hidden = true;
      return;
    }
    const entry = rows.get(name);
    if (view && view.name === name && !entry) gone = name; // it was deleted while shown
    if (view && (view.name !== name || !entry || view.mime !== entry.mime)) stopView();
    $("view").hidden = false;
    $("view-title").textContent = name;
    const live = channelURL(name, "live");
    const playable = entry ? TS_TYPES.has(baseType(entry.mime)) : true;
    $("view-command").textContent = (playable ? "ffplay '" : "curl -sN '") + live + "'";
    if (!entry) {
      note(
        gone === name
          ? "The channel was deleted; waiting for a new one of that name."
          : "No channel of that name right now; waiting for it.",
      );
      $("view-meta").textContent = "";
      return;
    }
    const s = entry.status;
    $("view-meta").textContent =
      (s.mime_type || "no content type") +
      " · next seq " + s.next_seq +
      " · live readers " + s.live_readers +
      " · live jumps " + s.live_jumps +
      " · idle " + s.idle_s.toFixed(1) + " s";
    if (!view) {
      note("");
      gone = null;
      view = playable
        ? startPlayer(name, entry.mime, live)
        : startLog(name, entry.mime, Math.max(s.next_seq - 5, 0));
    }
  }

  function stopView() {
    if (view) {
      view.stop();
      view = null;
    }
  }

  function startPlayer(name, mime, live) {
    const video = $("player");
    const clock = $("player-time");
    const current = { name, mime, stop: () => {} };
    if (!window.mpegts || !mpegts.getFeatureList().mseLivePlayback) {
      note("This browser cannot play MPEG-TS here (no Media Source Extensions).");
      return current;
    }
    video.hidden = false;
    clock.hidden = false;
    let player = null;
    let retry = null;
    const open = () => {
      player = mpegts.createPlayer(
        { type: "mpegts", isLive: true, url: live },
        {
          enableWorker: false,
          liveBufferLatencyChasing: true,
          liveBufferLatencyMaxLatency: 3,
          liveBufferLatencyMinRemain: 0.5,
          headers: authHeaders(),
        },
      );
      player.on(mpegts.Events.ERROR, (type, detail) => {
        note("Player: " + type + " (" + detail + "); trying again.");
        close();
        retry = setTimeout(open, RETRY_MS);
      });
      player.on(mpegts.Events.LOADING_COMPLETE, () => note("The stream ended."));
      player.attachMediaElement(video);
      player.load();
      video.play().catch(() => {}); // muted autoplay; a refusal leaves the controls
    };
    const close = () => {
      if (player) {
        player.destroy();
        player = null;
      }
    };
    video.ontimeupdate = () => {
      clock.textContent = "playing · " + video.currentTime.toFixed(1) + " s";
    };
    open();
    current.stop = () => {
      clearTimeout(retry);
      close();
      video.ontimeupdate = null;
      video.removeAttribute("src");
      video.hidden = true;
      clock.hidden = true;
    };
    return current;
  }

  function startLog(name, mime, first) {
    const log = $("log");
    log.replaceChildren();
    log.hidden = false;
    const abort = new AbortController();
    const current = {
      name,
      mime,
      stop: () => {
        abort.abort();
        log.hidden = true;
      },
    };
    follow(name, first, log, abort.signal).catch((error) => {
      if (!abort.signal.aborted) note("Log stopped: " + error.message);
    });
    return current;
  }

  // Follow the channel segment by segment, as a trickle subscriber does: from the oldest
  // segment in the window (``first``), then seq + 1; a 470 jumps to Lp-Trickle-Latest.
  async function follow(name, first, log, signal) {
    let seq = first;
    while (!signal.aborted) {
      let response;
      try {
        response = await fetch(channelURL(name, String(seq)), { headers: authHeaders(), signal });
      } catch (error) {
        if (signal.aborted) return;
        await sleep(RETRY_MS, signal);
        continue;
      }
      if (response.status === 470) {
        seq = Number(response.headers.get("Lp-Trickle-Latest"));
        continue;
      }
      if (response.status === 404) {
        note("The channel is gone.");
        return;
      }
      if (!response.ok) {
        note("Log: HTTP " + response.status + "; trying again.");
        await sleep(RETRY_MS, signal);
        continue;
      }
      const got = Number(response.headers.get("Lp-Trickle-Seq"));
      const body = new Uint8Array(await response.arrayBuffer());
      const closed = response.headers.get("Lp-Trickle-Closed");
      if (body.length > 0 || !closed) addEntry(log, got, body);
      if (closed) {
        note("The channel was deleted.");
        return;
      }
      seq = got + 1;
    }
  }

  function sleep(ms, signal) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      signal.addEventListener("abort", () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  const decoder = new TextDecoder("utf-8", { fatal: true });

  function describe(body) {
    let text = null;
    try {
      text = decoder.decode(body);
    } catch (error) {
      text = null;
    }
    if (text !== null && !/[\u0000-\u0008\u000e-\u001f]/.test(text)) {
      try {
        const value = JSON.parse(text);
        if (typeof value === "object" && value !== null) text = JSON.stringify(value, null, 2);
      } catch (error) {
        // not one JSON value (JSON lines, plain text): shown as it is
      }
      return text.length > TEXT_MAX ? text.slice(0, TEXT_MAX) + "…" : text;
    }
    const hex = Array.from(body.slice(0, 48), (byte) => byte.toString(16).padStart(2, "0"));
    return hex.join(" ") + (body.length > 48 ? " …" : "");
  }

  function addEntry(log, seq, body) {
    const item = document.createElement("li");
    item.dataset.seq = String(seq);
    const head = document.createElement("div");
    head.className = "seq";
    head.textContent =
      "seq " + seq + " · " + body.length + " bytes · " + new Date().toLocaleTimeString();
    const pre = document.createElement("pre");
    pre.textContent = body.length ? describe(body) : "(empty segment)";
    item.append(head, pre);
    log.prepend(item);
    while (log.children.length > LOG_KEEP) log.lastElementChild.remove();
  }

  // -- the token form --------------------------------------------------------------------

  $("token").value = token;
  $("auth").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem("trickle-token", token);
    stopView();
    refreshView();
  });
  window.addEventListener("hashchange", refreshView);
  poll();
})();
