// The task console (tasks/console.py): recent tasks, one followed live, cancel. No library:
// fetch for the lists and the cancel, EventSource for the stream, all on this service.
"use strict";
(function () {
  const root = document.getElementById("console");
  const staff = root.dataset.staff === "true";
  const api = root.dataset.api;
  const tasksUrl = root.dataset.tasks;
  const KEY = "mageagent-console-key";
  const $ = (id) => document.getElementById(id);
  let key = staff ? null : sessionStorage.getItem(KEY);
  let source = null;
  let followed = null;
  let ended = null;  // the followed task, once its stream said `done`
  let timer = null;

  function headers() {
    // A key is a bearer credential; a staff session rides on the cookie, with the CSRF token.
    return key ? { Authorization: "Bearer " + key } : { "X-CSRFToken": root.dataset.csrf };
  }

  async function call(url, method) {
    const response = await fetch(url, { method: method || "GET", headers: headers(), credentials: "same-origin" });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error((body.error && body.error.message) || response.statusText);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function seconds(from, to) {
    if (!from) return "";
    const ms = (to ? Date.parse(to) : Date.now()) - Date.parse(from);
    return (Math.max(ms, 0) / 1000).toFixed(1) + " s" + (to ? "" : " …");
  }

  function cell(row, text, className) {
    const td = row.insertCell();
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function render(tasks) {
    const body = $("tasks").tBodies[0];
    body.replaceChildren();
    for (const task of tasks) {
      const row = body.insertRow();
      row.dataset.taskId = task.id;
      if (task.id === followed) row.className = "selected";
      cell(row, new Date(task.created_at).toLocaleTimeString());
      if (staff) cell(row, task.company_id + " / " + task.app_id);
      cell(row, task.status, "status status-" + task.status);
      cell(row, (task.result && task.result.model) || (task.routing && task.routing.model) || task.model || "auto");
      const cost = task.result && task.result.cost_usd;
      cell(row, cost == null ? "" : cost.toFixed(6), "num");
      cell(row, seconds(task.started_at, task.completed_at), "num");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "follow";
      button.textContent = "follow " + task.id.slice(0, 8);
      button.addEventListener("click", () => follow(task.id));
      row.insertCell().append(button);
    }
  }

  async function refresh() {
    try {
      const page = await call(tasksUrl + "?page_size=25");
      render(page.results);
      $("list-error").hidden = true;
      $("refreshed").textContent = "at " + new Date().toLocaleTimeString();
    } catch (error) {
      if (error.status === 401 && key) return signOut("That key was refused: " + error.message);
      $("list-error").textContent = "Could not list tasks: " + error.message;
      $("list-error").hidden = false;
    }
  }

  function setStatus(status) {
    $("follow-status").textContent = status;
    $("follow-status").className = "status status-" + status;
    $("cancel").disabled = !(status === "queued" || status === "processing");
  }

  function follow(taskId) {
    if (source) source.close();
    followed = taskId;
    ended = null;
    location.hash = "task=" + taskId;
    $("follow").hidden = false;
    $("follow-id").textContent = taskId;
    $("output").textContent = "";
    $("follow-note").textContent = "following…";
    setStatus("");
    // EventSource cannot send headers: a key goes in ?token= (the contract's way for
    // browsers); a staff session goes as its cookie, this page being the service's own origin.
    const url = api + "/tasks/" + encodeURIComponent(taskId) + "/stream" +
      (key ? "?token=" + encodeURIComponent(key) : "");
    const stream = new EventSource(url);
    source = stream;
    stream.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (event.type === "chunk") {
        $("output").textContent += event.content;
      } else if (event.type === "done") {
        stream.close();
        ended = taskId;
        setStatus(event.status);
        $("follow-note").textContent = "done";
        if (event.error) $("follow-note").textContent += ": " + event.error.message;
        refresh();
      }
    };
    stream.addEventListener("status", (message) => setStatus(JSON.parse(message.data).status));
    // A retry starts the answer again: what came before it is dropped.
    stream.addEventListener("reset", () => { $("output").textContent = ""; });
    stream.onerror = () => {
      if (stream.readyState === EventSource.CLOSED) $("follow-note").textContent = "the stream was refused";
    };
    refresh();
  }

  async function cancel() {
    if (!followed) return;
    $("cancel").disabled = true;
    try {
      const asked = followed;
      const task = await call(tasksUrl + "/" + encodeURIComponent(asked) + "/cancel", "POST");
      // The stream's `done` can come before the cancel's answer: the task's end stays shown.
      if (followed === asked && ended !== asked) {
        setStatus(task.status);
        $("follow-note").textContent = "cancel asked";
      }
    } catch (error) {
      $("follow-note").textContent = "cancel refused: " + error.message;
    }
    refresh();
  }

  function start() {
    $("key-form").hidden = true;
    $("tasks-section").hidden = false;
    $("sign-out").hidden = staff;
    refresh();
    clearInterval(timer);
    timer = setInterval(refresh, 2000);
    const wanted = /^#task=([\w-]+)$/.exec(location.hash);
    if (wanted) follow(wanted[1]);
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY);
    key = null;
    clearInterval(timer);
    if (source) source.close();
    $("tasks-section").hidden = true;
    $("follow").hidden = true;
    $("key-form").hidden = false;
    $("list-error").hidden = true;
    $("key-error").textContent = message || "";
    $("key-error").hidden = !message;
  }

  $("key-form").addEventListener("submit", (submitted) => {
    submitted.preventDefault();
    key = $("key").value.trim();
    sessionStorage.setItem(KEY, key);
    $("key").value = "";
    start();
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("cancel").addEventListener("click", cancel);
  if (staff || key) start();
})();
