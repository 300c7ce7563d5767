// kaon's chat page: conversations in localStorage, streaming from /v1/chat/completions over
// Server-Sent Events (fetch + ReadableStream), a Stop button that aborts the request (the server
// then aborts the generation and frees its KV cache blocks), per-message TTFT and tokens/s.
import { renderMarkdown } from "./markdown.js";

const STORE_KEY = "kaon.conversations.v1";
const SETTINGS_KEY = "kaon.settings.v1";
const $ = (id) => document.getElementById(id);

const state = { conversations: [], currentId: null, controller: null, renderQueued: false };

// ---- storage -------------------------------------------------------------------------------

function load() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE_KEY) || "{}");
    state.conversations = Array.isArray(saved.conversations) ? saved.conversations : [];
    state.currentId = saved.currentId ?? null;
  } catch {
    state.conversations = [];
  }
  if (!current()) newConversation();
  const settings = JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}");
  for (const [key, id] of Object.entries(SETTING_FIELDS)) {
    if (settings[key] !== undefined) $(id).value = settings[key];
  }
}

function save() {
  const { conversations, currentId } = state;
  try {
    localStorage.setItem(STORE_KEY, JSON.stringify({ conversations, currentId }));
  } catch (error) {
    showError(`Could not save the conversations in this browser: ${error.message}. `
      + "Delete old conversations to make room.");
  }
}

const SETTING_FIELDS = {
  apiKey: "api-key",
  systemPrompt: "system-prompt",
  temperature: "temperature",
  topP: "top-p",
  maxTokens: "max-tokens",
};

function saveSettings() {
  const settings = {};
  for (const [key, id] of Object.entries(SETTING_FIELDS)) settings[key] = $(id).value;
  localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings));
}

function current() {
  return state.conversations.find((c) => c.id === state.currentId);
}

function newConversation() {
  const conversation = { id: `${Date.now()}-${Math.random().toString(36).slice(2, 8)}`,
    title: "", messages: [] };
  state.conversations.unshift(conversation);
  state.currentId = conversation.id;
  save();
}

// ---- rendering -----------------------------------------------------------------------------

function renderSidebar() {
  const list = $("conversations");
  list.replaceChildren();
  for (const conversation of state.conversations) {
    const item = document.createElement("li");
    item.classList.toggle("current", conversation.id === state.currentId);
    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    open.textContent = conversation.title || "New chat";
    open.addEventListener("click", () => {
      if (state.controller) return; // finish or stop the running reply first
      state.currentId = conversation.id;
      save();
      renderAll();
    });
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "delete";
    remove.title = "Delete this conversation";
    remove.textContent = "×";
    remove.addEventListener("click", () => {
      if (state.controller) return;
      state.conversations = state.conversations.filter((c) => c.id !== conversation.id);
      if (state.currentId === conversation.id) state.currentId = state.conversations[0]?.id;
      if (!current()) newConversation();
      save();
      renderAll();
    });
    item.append(open, remove);
    list.append(item);
  }
}

function statsText(stats) {
  const parts = [];
  if (stats.ttftMs != null) parts.push(`TTFT ${(stats.ttftMs / 1000).toFixed(2)} s`);
  if (stats.tokensPerS != null) parts.push(`${stats.tokensPerS.toFixed(1)} tokens/s`);
  if (stats.numTokens != null) parts.push(`${stats.numTokens} token${stats.numTokens === 1 ? "" : "s"}`);
  if (stats.finishReason) parts.push(`finish: ${stats.finishReason}`);
  return parts.join(" · ");
}

function messageElement(message) {
  const box = document.createElement("div");
  box.className = `message ${message.role}`;
  const role = document.createElement("div");
  role.className = "role";
  role.textContent = message.role === "user" ? "You" : "Assistant";
  const content = document.createElement("div");
  content.className = "content";
  content.append(renderMarkdown(message.content));
  box.append(role, content);
  if (message.pending) box.classList.add("pending");
  if (message.stopped) box.classList.add("stopped");
  const footer = [];
  if (message.stats) footer.push(statsText(message.stats));
  if (message.stopped) footer.push("stopped");
  if (footer.length) {
    const stats = document.createElement("div");
    stats.className = "stats";
    stats.textContent = footer.join(" · ");
    box.append(stats);
  }
  if (message.error) {
    const error = document.createElement("div");
    error.className = "message-error";
    error.textContent = message.error;
    box.append(error);
  }
  return box;
}

function renderMessages() {
  const view = $("messages");
  view.replaceChildren(...current().messages.map(messageElement));
  view.scrollTop = view.scrollHeight;
}

function renderAll() {
  renderSidebar();
  renderMessages();
}

/** Re-render the streaming message at most once per animation frame. */
function queueRender() {
  if (state.renderQueued) return;
  state.renderQueued = true;
  requestAnimationFrame(() => {
    state.renderQueued = false;
    renderMessages();
  });
}

function showError(text) {
  const banner = $("error");
  banner.textContent = text;
  banner.hidden = !text;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  $("new-chat").disabled = busy;
}

// ---- the API -------------------------------------------------------------------------------

class ServerError extends Error {}

function headers() {
  const result = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

/** A readable message for a non-2xx response (OpenAI's error envelope when there is one). */
async function describeResponse(response) {
  let detail = response.statusText;
  try {
    const body = await response.json();
    detail = body?.error?.message ?? JSON.stringify(body);
  } catch {
    // not JSON: keep the status text
  }
  if (response.status === 401) {
    return `The server refused the API key (HTTP 401: ${detail}). `
      + "Enter the key given to kaon serve --api-key under Settings.";
  }
  return `The server returned an error (HTTP ${response.status}): ${detail}`;
}

function networkError(error) {
  return `Cannot reach the kaon server at ${location.origin} (${error.message}). `
    + "Is kaon serve still running?";
}

/** Yield the data of each Server-Sent Event of a response body (events end with a blank line). */
async function* sseData(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (data) yield data;
    }
  }
}

function requestBody(conversation) {
  const messages = [];
  const system = $("system-prompt").value.trim();
  if (system) messages.push({ role: "system", content: system });
  for (const message of conversation.messages) {
    if (message.pending || (message.error && !message.content)) continue;
    messages.push({ role: message.role, content: message.content });
  }
  const body = { messages, stream: true, stream_options: { include_usage: true } };
  const number = (id) => ($(id).value.trim() === "" ? null : Number($(id).value));
  if (number("temperature") !== null) body.temperature = number("temperature");
  if (number("top-p") !== null) body.top_p = number("top-p");
  if (number("max-tokens") !== null) body.max_tokens = number("max-tokens");
  return body;
}

/** Decode rate: tokens after the first over the time after the first (TPOT's inverse). */
function finishStats(timing, usage, numChunks, finishReason) {
  const numTokens = usage?.completion_tokens ?? numChunks;
  const stats = { numTokens, finishReason };
  if (timing.first != null) {
    stats.ttftMs = timing.first - timing.start;
    const decodeS = (timing.last - timing.first) / 1000;
    if (numTokens > 1 && decodeS > 0) stats.tokensPerS = (numTokens - 1) / decodeS;
  }
  return stats;
}

async function send(text) {
  const conversation = current();
  conversation.messages.push({ role: "user", content: text });
  if (!conversation.title) conversation.title = text.slice(0, 48);
  const body = requestBody(conversation);
  const reply = { role: "assistant", content: "", pending: true };
  conversation.messages.push(reply);
  save();
  renderAll();
  showError("");
  setBusy(true);
  state.controller = new AbortController();
  const timing = { start: performance.now(), first: null, last: null };
  let usage = null;
  let numChunks = 0;
  let finishReason = null;
  try {
    let response;
    try {
      response = await fetch("/v1/chat/completions", { method: "POST", headers: headers(),
        body: JSON.stringify(body), signal: state.controller.signal });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ServerError(networkError(error));
    }
    if (!response.ok) throw new ServerError(await describeResponse(response));
    for await (const data of sseData(response.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ServerError(`Error during generation: ${chunk.error.message}`);
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices?.[0];
      if (choice?.finish_reason) finishReason = choice.finish_reason;
      const delta = choice?.delta?.content;
      if (delta) {
        timing.last = performance.now();
        timing.first ??= timing.last;
        numChunks += 1;
        reply.content += delta;
        queueRender();
      }
    }
  } catch (error) {
    if (error.name === "AbortError") {
      reply.stopped = true;
    } else {
      const message = error instanceof ServerError ? error.message
        : `The connection to the server broke off: ${error.message}`;
      reply.error = message;
      showError(message);
    }
  } finally {
    delete reply.pending;
    reply.stats = finishStats(timing, usage, numChunks, finishReason);
    state.controller = null;
    save();
    renderAll();
    setBusy(false);
  }
}

/** Show the served model and whether the server and API key work. */
async function checkServer() {
  const status = $("server-status");
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    if (response.ok) {
      const models = await response.json();
      $("model-name").textContent = models.data?.[0]?.id ?? "";
      status.textContent = "connected";
      status.className = "status ok";
    } else {
      status.textContent = response.status === 401 ? "API key needed or wrong"
        : `server error ${response.status}`;
      status.className = "status bad";
    }
  } catch (error) {
    status.textContent = "server unreachable";
    status.className = "status bad";
  }
}

// ---- wiring --------------------------------------------------------------------------------

function submit(event) {
  event?.preventDefault();
  const prompt = $("prompt");
  const text = prompt.value.trim();
  if (!text || state.controller) return;
  prompt.value = "";
  send(text);
}

function main() {
  load();
  renderAll();
  $("composer").addEventListener("submit", submit);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) submit(event);
  });
  $("stop").addEventListener("click", () => state.controller?.abort());
  $("new-chat").addEventListener("click", () => {
    newConversation();
    renderAll();
    showError("");
  });
  for (const id of Object.values(SETTING_FIELDS)) $(id).addEventListener("input", saveSettings);
  $("api-key").addEventListener("change", checkServer);
  checkServer();
}

main();
