"use strict";
// Follows one run's stream (./events, read with the watch cookie) and shows each event as it comes. Every text
// the agent or the run produced is set with textContent, never parsed as HTML. The EventSource resumes a
// dropped connection with Last-Event-ID by itself; when it gives up (an HTTP error, such as a gateway
// answering 503 while the Kubernetes API is away), a new one resumes from the last id shown (?lastEventId=).
(() => {
  const byId = (id) => document.getElementById(id);
  const events = byId("events");
  const phase = byId("phase");
  const progress = byId("progress");
  const connection = byId("connection");
  const sessionExpires = Number(document.body.dataset.sessionExpires) * 1000;
  const TERMINAL = new Set(["Succeeded", "Failed", "TimedOut", "Cancelled"]);
  // The fields each event type shows, in order; an unknown type shows all of its own.
  const FIELDS = {
    iteration: ["iteration", "maxIterations", "retry"],
    tool_call: ["name", "arguments"],
    tool_result: ["name", "ok", "output"],
    checkpoint: ["iteration", "record", "bytes", "fallback", "problem"],
    finished: ["outcome", "message", "iteration", "phase", "reason", "replay"],
  };
  const LABELS = {
    iteration: "Iteration", tool_call: "Tool call", tool_result: "Tool result", checkpoint: "Checkpoint",
    finished: "Finished",
  };
  const messages = new Map(); // iteration -> the element its latest model call's streamed text goes into
  let lastId = 0;
  let ended = false;
  let source = null;
  let retryDelay = 1000;

  const show = (text) => { connection.textContent = text; };

  function entry(type, id) {
    const item = document.createElement("li");
    item.className = `event ${type}`;
    item.dataset.type = type;
    if (id !== null) item.dataset.id = String(id);
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = LABELS[type] || type;
    item.append(label);
    events.append(item);
    return item;
  }

  function fields(item, type, data) {
    const list = document.createElement("dl");
    for (const name of FIELDS[type] || Object.keys(data)) {
      if (data[name] === undefined || data[name] === null) continue;
      const term = document.createElement("dt");
      term.textContent = name;
      const value = document.createElement("dd");
      value.dataset.field = name;
      value.textContent = typeof data[name] === "string" ? data[name] : JSON.stringify(data[name]);
      list.append(term, value);
    }
    item.append(list);
  }

  function messageOf(iteration) {
    let message = messages.get(iteration);
    if (!message) { // tokens of an iteration whose event this page did not get: shown all the same
      message = document.createElement("p");
      message.className = "message";
      entry("message", null).append(message);
      messages.set(iteration, message);
    }
    return message;
  }

  function render(type, id, data) {
    if (type === "token") {
      const text = document.createElement("span");
      text.dataset.id = String(id);
      text.dataset.type = type;
      text.dataset.field = "text";
      text.textContent = data.text;
      messageOf(data.iteration).append(text);
      return;
    }
    const item = entry(type, id);
    if (id === null) item.classList.add("gateway");
    fields(item, type, data);
    if (type === "iteration") {
      const earlier = messages.get(data.iteration);
      if (earlier) earlier.classList.add("superseded"); // the call a lost pod had made; the retry's text follows
      const message = document.createElement("p");
      message.className = "message";
      item.append(message);
      messages.set(data.iteration, message);
      progress.textContent = `${data.iteration} / ${data.maxIterations}`;
    }
    if (type === "finished") {
      ended = true;
      phase.textContent = data.phase || data.outcome || phase.textContent;
      show("ended");
      if (source) source.close();
    } else if (!TERMINAL.has(phase.textContent)) {
      phase.textContent = "Running";
    }
    item.scrollIntoView({ block: "nearest" });
  }

  function receive(message) {
    const id = message.lastEventId && message.lastEventId !== "" ? Number(message.lastEventId) : null;
    // The gateway never repeats an event; this holds even for a stream restarted by hand.
    if (id !== null && id <= lastId) return;
    let data;
    try {
      data = JSON.parse(message.data);
    } catch {
      data = { data: message.data };
    }
    if (id !== null) lastId = id;
    render(message.type, id, data);
  }

  function connect() {
    source = new EventSource(lastId > 0 ? `events?lastEventId=${lastId}` : "events");
    for (const type of ["iteration", "token", "tool_call", "tool_result", "checkpoint", "finished"]) {
      source.addEventListener(type, receive);
    }
    source.onmessage = receive;
    source.onopen = () => { retryDelay = 1000; show("live"); };
    source.onerror = () => {
      if (ended) return;
      if (source.readyState === EventSource.CONNECTING) {
        show(`reconnecting after event ${lastId}`);
        return;
      }
      source.close();
      if (Date.now() >= sessionExpires) {
        show("signed out: the sign-in expired; reload the page to sign in again");
        return;
      }
      show(`reconnecting after event ${lastId} in ${retryDelay / 1000} s`);
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 30000);
    };
  }

  connect();
})();
