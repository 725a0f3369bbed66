// Try-it page: calls the service's JSON API with the token the user typed (kept for the tab only).
"use strict";

const $ = (id) => document.getElementById(id);
const tokenBox = $("token");
tokenBox.value = sessionStorage.getItem("arm-token") || "";
tokenBox.addEventListener("change", () => { sessionStorage.setItem("arm-token", tokenBox.value); loadMetadata(); });

function headers() {
  const h = { "Content-Type": "application/json" };
  if (tokenBox.value) h["Authorization"] = "Bearer " + tokenBox.value;
  return h;
}

// The service answers errors as {"error": "...", "detail": [{"loc": [...], "msg": "..."}]}.
function errorText(status, body) {
  if (body && Array.isArray(body.detail) && body.detail.length) {
    return body.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  }
  if (Array.isArray(body) && body[0] && body[0].error) return body[0].error;
  return (body && body.error) || `HTTP ${status}`;
}

async function call(path, payload) {
  const resp = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(payload) });
  let body = null;
  try { body = await resp.json(); } catch (e) { /* not JSON */ }
  if (!resp.ok) throw new Error(errorText(resp.status, body));
  return body;
}

function setStatus(el, text, isError) {
  el.textContent = text;
  el.classList.toggle("error", !!isError);
}

function pngImg(b64, alt) {
  const img = document.createElement("img");
  img.src = "data:image/png;base64," + b64;
  img.alt = alt;
  return img;
}

// Optional numeric field: absent when empty so the server default applies.
function num(id, parse) {
  const v = $(id).value.trim();
  return v === "" ? undefined : parse(v);
}

function readFile(input) {
  return new Promise((resolve, reject) => {
    const file = input.files[0];
    if (!file) return reject(new Error("choose an image first"));
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);  // data URL: the server accepts it as is
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function loadMetadata() {
  try {
    const resp = await fetch("/metadata", { headers: headers() });
    const meta = await resp.json();
    if (!resp.ok) throw new Error(errorText(resp.status, meta));
    const parts = [meta.model];
    if (meta.data_version) parts.push("data " + meta.data_version);
    $("model-tag").textContent = parts.join(" · ");
    const d = meta.defaults || {};
    const fill = (id, v) => { if (v !== undefined && $(id).value === "") $(id).placeholder = String(v); };
    fill("gen-cfg", d.cfg_scale); fill("gen-temperature", d.temperature);
    fill("gen-top-k", d.top_k); fill("gen-top-p", d.top_p);
    if (meta.limits) $("gen-n").max = meta.limits.max_n;
  } catch (e) {
    $("model-tag").textContent = "unavailable (" + e.message + ")";
  }
}

$("gen-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const status = $("gen-status"), out = $("gen-results");
  const payload = {
    prompt: $("gen-prompt").value,
    n: num("gen-n", parseInt),
    cfg_scale: num("gen-cfg", parseFloat),
    temperature: num("gen-temperature", parseFloat),
    top_k: num("gen-top-k", parseInt),
    top_p: num("gen-top-p", parseFloat),
    seed: num("gen-seed", parseInt),
  };
  setStatus(status, "generating…");
  $("gen-submit").disabled = true;
  const t0 = performance.now();
  try {
    const res = await call("/generate", payload);
    out.replaceChildren(...res.images.map((b64, i) => pngImg(b64, `${payload.prompt} (${i + 1})`)));
    setStatus(status, `${res.images.length} image(s), seed ${res.seed}, ${Math.round(performance.now() - t0)} ms`);
  } catch (e) {
    setStatus(status, e.message, true);
  } finally {
    $("gen-submit").disabled = false;
  }
});

$("desc-image").addEventListener("change", async () => {
  try { $("desc-preview").src = await readFile($("desc-image")); } catch (e) { /* no file */ }
});
$("edit-image").addEventListener("change", async () => {
  try { $("edit-preview").src = await readFile($("edit-image")); } catch (e) { /* no file */ }
});

$("desc-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const status = $("desc-status");
  setStatus(status, "describing…");
  $("desc-submit").disabled = true;
  try {
    const question = $("desc-question").value.trim();
    const payload = { image: await readFile($("desc-image")) };
    if (question) payload.question = question;
    const t0 = performance.now();
    const res = await call("/describe", payload);
    $("desc-text").textContent = res.text;
    setStatus(status, `answered in ${Math.round(performance.now() - t0)} ms`);
  } catch (e) {
    setStatus(status, e.message, true);
  } finally {
    $("desc-submit").disabled = false;
  }
});

$("edit-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const status = $("edit-status");
  setStatus(status, "editing…");
  $("edit-submit").disabled = true;
  try {
    const payload = {
      image: await readFile($("edit-image")),
      instruction: $("edit-instruction").value,
      seed: num("edit-seed", parseInt),
    };
    const res = await call("/edit", payload);
    $("edit-results").replaceChildren(pngImg(res.image, payload.instruction));
    setStatus(status, `seed ${res.seed}`);
  } catch (e) {
    setStatus(status, e.message, true);
  } finally {
    $("edit-submit").disabled = false;
  }
});

loadMetadata();
