// Playground: chat with any served model or alias (streaming), and the same request as code.
import { api, sse } from "./api.js";
import { fill, guarded, h } from "./ui.js";

export async function view(ctx) {
  const models = await api("/v1/models", { signal: ctx.signal });
  const preferred = ctx.query.get("model");
  const model = h("select", { id: "pg-model" }, models.data.map((m) =>
    h("option", { value: m.id, selected: m.id === preferred }, m.alias_of ? `${m.id} → ${m.alias_of}` : m.id)));
  const system = h("textarea", { id: "pg-system", placeholder: "optional system prompt", rows: 2 });
  const maxTokens = h("input", { id: "pg-max-tokens", type: "number", min: "1", value: "64" });
  const temperature = h("input", { id: "pg-temperature", type: "number", min: "0", max: "2", step: "0.1", value: "0" });
  const input = h("textarea", { id: "pg-input", rows: 3, placeholder: "Ask something (Ctrl+Enter sends)" });
  const send = h("button", { type: "submit", class: "primary", id: "pg-send" }, "Send");
  const stop = h("button", { type: "button", id: "pg-stop", disabled: true }, "Stop");
  const clear = h("button", { type: "button", id: "pg-clear" }, "Clear");
  const chat = h("div", { class: "chat", id: "pg-chat", "aria-live": "polite", "aria-label": "Conversation" });
  const info = h("p", { class: "hint", id: "pg-info" });
  const python = h("pre", { id: "pg-python" });
  const curl = h("pre", { id: "pg-curl" });
  const history = [];
  let streaming = null;

  const body = (pending) => {
    const messages = [];
    if (system.value.trim()) messages.push({ role: "system", content: system.value.trim() });
    messages.push(...history, ...(pending ? [{ role: "user", content: pending }] : []));
    return { model: model.value, messages, max_tokens: Number(maxTokens.value), temperature: Number(temperature.value), stream: true };
  };
  const showCode = () => {
    const b = body(input.value.trim() || "Hello!");
    const msgs = JSON.stringify(b.messages, null, 4).replace(/\n/g, "\n    ");
    python.textContent = `import os
from openai import OpenAI

client = OpenAI(base_url="${location.origin}/v1", api_key=os.environ["TUNELOOP_API_KEY"])
stream = client.chat.completions.create(
    model=${JSON.stringify(b.model)}, max_tokens=${b.max_tokens}, temperature=${b.temperature}, stream=True,
    messages=${msgs})
for chunk in stream:
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="")`;
    curl.textContent = `curl -N ${location.origin}/v1/chat/completions \\
  -H "Authorization: Bearer $TUNELOOP_API_KEY" -H 'content-type: application/json' \\
  -d '${JSON.stringify(b).replace(/'/g, "'\\''")}'`;
  };
  const bubble = (role, content) => h("div", { class: `msg ${role}` }, h("span", { class: "role" }, role), h("span", { class: "content" }, content));

  const form = h("form", { id: "pg-form" },
    h("div", { class: "toolbar" },
      h("div", { class: "field" }, h("label", { for: model.id }, "Model or alias"), model),
      h("div", { class: "field" }, h("label", { for: maxTokens.id }, "max_tokens"), maxTokens),
      h("div", { class: "field" }, h("label", { for: temperature.id }, "temperature"), temperature)),
    h("div", { class: "field" }, h("label", { for: system.id }, "System prompt"), system),
    chat,
    h("div", { class: "field" }, h("label", { for: input.id }, "Message"), input),
    h("div", { class: "actions" }, clear, stop, send), info);

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text || streaming) return;
    const req = body(text);
    showCode();
    history.push({ role: "user", content: text });
    input.value = "";
    chat.append(bubble("user", text));
    const answer = bubble("assistant", "");
    const content = answer.querySelector(".content");
    answer.setAttribute("aria-busy", "true");
    chat.append(answer);
    streaming = new AbortController();
    ctx.signal.addEventListener("abort", () => streaming?.abort());
    send.disabled = true; stop.disabled = false;
    let served = null, finish = null, chunks = 0;
    await guarded(async () => {
      try {
        for await (const ev2 of sse("/v1/chat/completions", { json: req, signal: streaming.signal })) {
          if (ev2.data === "[DONE]") break;
          const d = ev2.data;
          if (d && d.error) throw Object.assign(new Error(d.error.message), d.error);
          served = d.model || served;
          const c = d.choices?.[0];
          if (c?.delta?.content) { content.textContent += c.delta.content; chunks++; chat.scrollTop = chat.scrollHeight; }
          if (c?.finish_reason) finish = c.finish_reason;
        }
      } catch (e) {
        if (e.name !== "AbortError") { answer.classList.add("error"); throw e; }
      }
    });
    answer.removeAttribute("aria-busy");
    answer.dataset.done = "true";
    history.push({ role: "assistant", content: content.textContent });
    info.textContent = served ? `answered by ${served} · ${chunks} chunk(s) streamed · finish_reason ${finish ?? "–"}` : "";
    streaming = null;
    send.disabled = false; stop.disabled = true;
  });
  stop.addEventListener("click", () => streaming?.abort());
  clear.addEventListener("click", () => { history.length = 0; chat.replaceChildren(); info.textContent = ""; showCode(); });
  input.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit(); });
  for (const el of [model, system, maxTokens, temperature, input]) el.addEventListener("input", showCode);

  fill(ctx.main, 
    h("h1", {}, "Playground"),
    h("div", { class: "grid two" },
      h("section", { class: "panel", "aria-labelledby": "pg-h" }, h("h2", { id: "pg-h" }, "Chat (streaming)"), form),
      h("section", { class: "panel", "aria-labelledby": "code-h" }, h("h2", { id: "code-h" }, "The same request with the OpenAI SDK"),
        h("p", { class: "hint" }, "Exactly what the console sends: POST /v1/chat/completions with stream=true, your key as a bearer token."),
        python, h("h3", {}, "curl"), curl)));
  showCode();
}
