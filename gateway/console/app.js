// The help-desk console: a static page calling the gateway's JSON API on
// the same origin with the agent's key (kept in sessionStorage, this tab
// only). Every value from the server is written with textContent, never as
// HTML. It must never store the key anywhere else, nor show a PIN except
// the one a reset answers.
"use strict";

const KEY = "watchword-console-key";
const $ = (id) => document.getElementById(id);

function key() {
  return sessionStorage.getItem(KEY) || "";
}

async function api(method, path, body) {
  const init = { method, headers: { Authorization: "Bearer " + key() } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  let data = null;
  try {
    data = await resp.json();
  } catch (_) {
    data = null;
  }
  return { status: resp.status, data };
}

function problem(r) {
  if (r.data && r.data.message) return r.data.message;
  return "the server answered " + r.status;
}

function show(signedIn) {
  $("signin").hidden = signedIn;
  $("desk").hidden = !signedIn;
  $("signout").hidden = !signedIn;
}

function cell(tr, text) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  tr.appendChild(td);
  return td;
}

let current = null;

async function signIn(ev) {
  ev.preventDefault();
  $("signin-error").textContent = "";
  sessionStorage.setItem(KEY, $("key").value.trim());
  $("key").value = "";
  const r = await api("GET", "/v1/users?limit=1");
  if (r.status !== 200) {
    sessionStorage.removeItem(KEY);
    $("signin-error").textContent =
      r.status === 401 || r.status === 403
        ? "This key is not a help-desk or admin key of any tenant."
        : problem(r);
    return;
  }
  $("who").textContent = "signed in";
  show(true);
}

function signOut() {
  sessionStorage.removeItem(KEY);
  current = null;
  $("user").hidden = true;
  $("who").textContent = "";
  show(false);
}

async function lookUp(ev) {
  if (ev) ev.preventDefault();
  const subject = $("subject").value.trim();
  $("lookup-error").textContent = "";
  $("user-error").textContent = "";
  $("verify-result").textContent = "";
  $("verification").hidden = true;
  $("pin-new").hidden = true;
  $("pin-new").textContent = "";
  const path = "/v1/users/" + encodeURIComponent(subject);
  const u = await api("GET", path);
  if (u.status !== 200) {
    $("user").hidden = true;
    $("lookup-error").textContent = u.status === 404 ? "No such user." : problem(u);
    return;
  }
  current = subject;
  $("user-title").textContent = u.data.display_name
    ? u.data.display_name + " (" + u.data.subject + ")"
    : u.data.subject;
  $("user-state").textContent = u.data.enabled ? "Enabled" : "Disabled";
  const methods = $("methods");
  methods.replaceChildren();
  for (const m of u.data.methods || []) {
    const tr = document.createElement("tr");
    cell(tr, m.type);
    cell(tr, m.destination);
    cell(tr, m.state);
    cell(tr, m.effective_at || "");
    methods.appendChild(tr);
  }
  await loadTokens(path);
  await loadPin(path);
  $("user").hidden = false;
}

async function loadTokens(path) {
  const tokens = $("tokens");
  tokens.replaceChildren();
  const t = await api("GET", path + "/tokens");
  if (t.status !== 200) return;
  for (const tok of t.data.tokens || []) {
    const tr = document.createElement("tr");
    cell(tr, tok.serial);
    cell(tr, tok.type);
    cell(tr, tok.state);
    cell(tr, tok.failcount);
    const td = cell(tr, "");
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = "Reset (admin)";
    b.addEventListener("click", async () => {
      const r = await api("POST", "/v1/tokens/" + encodeURIComponent(tok.serial) + "/reset");
      if (r.status !== 200) {
        $("user-error").textContent = problem(r);
        return;
      }
      await loadTokens(path);
    });
    td.appendChild(b);
    tokens.appendChild(tr);
  }
}

async function loadPin(path) {
  const p = await api("GET", path + "/pin");
  if (p.status !== 200) {
    $("pin-state").textContent = problem(p);
    return;
  }
  $("pin-state").textContent = p.data.set
    ? "Set: " + p.data.masked + " (" + p.data.state + ")"
    : "No PIN.";
}

async function resetPin() {
  const path = "/v1/users/" + encodeURIComponent(current);
  const r = await api("POST", path + "/pin", {});
  if (r.status !== 200) {
    $("user-error").textContent = problem(r);
    return;
  }
  $("pin-new").textContent = "New PIN, shown once: " + r.data.pin;
  $("pin-new").hidden = false;
  await loadPin(path);
}

let verification = null;

async function verifyCaller(ev) {
  ev.preventDefault();
  $("verify-result").textContent = "";
  $("verify-result").className = "";
  const r = await api("POST", "/v1/helpdesk/verifications", {
    subject: current,
    caller_id: $("caller-id").value.trim(),
  });
  $("verification").hidden = false;
  $("code-form").hidden = true;
  if (r.status === 200 && r.data.verified) {
    verification = null;
    $("verify-status").textContent = "";
    $("verify-result").textContent = "Verified by caller ID.";
    $("verify-result").className = "ok";
    return;
  }
  if (r.status !== 201) {
    $("verify-status").textContent = problem(r);
    return;
  }
  verification = r.data.id;
  $("verify-status").textContent =
    "A code was sent by " + r.data.method + " to " + r.data.sent_to + ". Ask the caller to read it.";
  $("code-form").hidden = false;
  $("code").focus();
}

async function checkCode(ev) {
  ev.preventDefault();
  if (!verification) return;
  const r = await api("POST", "/v1/helpdesk/verifications/" + encodeURIComponent(verification), {
    code: $("code").value.trim(),
  });
  $("code").value = "";
  if (r.status !== 200) {
    $("verify-result").textContent = problem(r);
    $("verify-result").className = "error";
    return;
  }
  if (r.data.verified) {
    $("verify-result").textContent = "Verified: the caller read the right code.";
    $("verify-result").className = "ok";
    $("code-form").hidden = true;
    verification = null;
  } else {
    $("verify-result").textContent =
      "Not verified (" + r.data.outcome + ")" +
      (r.data.outcome === "rejected" ? ", " + r.data.attempts_left + " tries left." : ".");
    $("verify-result").className = "error";
    if (r.data.outcome !== "rejected") {
      $("code-form").hidden = true;
      verification = null;
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", signOut);
  $("lookup-form").addEventListener("submit", lookUp);
  $("pin-reset").addEventListener("click", resetPin);
  $("verify-form").addEventListener("submit", verifyCaller);
  $("code-form").addEventListener("submit", checkCode);
  show(key() !== "");
});
