// The store console: lists the store's tasks and keeps them current from the service's
// server-sent events (/stores/<id>/events: snapshot, task, removed, unavailable).
// Overdue is judged here, on the browser's clock, and re-judged every second.
// Every value comes from Redis, so text is set with textContent, never parsed as HTML.
"use strict";

(() => {
  const storeId = document.body.dataset.storeId;
  const tasks = new Map(); // task_id -> task JSON as the flow wrote it
  const rows = new Map(); // task_id -> its <li>, kept so a row is updated in place
  const lists = {
    pickups: document.getElementById("pickups"),
    exceptions: document.getElementById("exceptions"),
    visits: document.getElementById("visits"),
    closed: document.getElementById("closed"),
  };
  const connection = document.getElementById("connection");

  const isClosed = (task) => task.status === "done" || task.status === "cancelled";
  const dueMs = (task) => (task.due_at ? Date.parse(task.due_at) : NaN);
  const isOverdue = (task, now) =>
    (task.status || "open") === "open" && !Number.isNaN(dueMs(task)) && dueMs(task) < now;

  function listOf(task) {
    if (isClosed(task)) return "closed";
    if (task.kind === "pickup_exception") return "exceptions";
    if (task.kind === "customer_visit") return "visits";
    return "pickups";
  }

  function badgeOf(task, now) {
    if (task.status === "cancelled") return ["cancelled", "cancelled"];
    if (task.status === "done") {
      return task.kind === "customer_visit" ? ["done", "collected"] : ["collected", "collected"];
    }
    if (isOverdue(task, now)) return ["overdue", "overdue"];
    if (task.kind === "pickup_exception") return ["exception", ""];
    if (task.kind === "customer_visit") return ["in store", ""];
    return ["to prepare", ""];
  }

  function minutes(ms) {
    const m = Math.floor(Math.abs(ms) / 60000);
    if (m < 1) return "under a minute";
    if (m < 60) return `${m} min`;
    if (m < 48 * 60) return `${Math.floor(m / 60)} h ${m % 60} min`;
    return `${Math.floor(m / 1440)} days`;
  }

  // A time of today as hh:mm, another day's with its date (the browser's time zone).
  function clock(iso) {
    const at = new Date(iso);
    if (Number.isNaN(at.getTime())) return String(iso);
    const time = at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    if (at.toDateString() === new Date().toDateString()) return time;
    return `${at.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
  }

  function linesText(lines) {
    if (!Array.isArray(lines) || lines.length === 0) return "";
    return lines.map((line) => `${line.qty} × ${line.sku}`).join(", ");
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fill(row, task, now) {
    const overdue = isOverdue(task, now);
    row.dataset.taskId = task.task_id;
    row.dataset.status = task.status || "open";
    row.dataset.kind = task.kind || "";
    row.dataset.overdue = overdue ? "true" : "false";
    row.classList.toggle("overdue", overdue);

    const [label, tone] = badgeOf(task, now);
    const title = element("div", "title");
    if (task.kind === "customer_visit") {
      title.textContent = `Customer ${task.customer_id || "unknown"}`;
    } else {
      title.textContent = `Order ${task.order_id || "?"}`;
    }
    title.append(element("span", `badge ${tone}`.trim(), label));
    const parts = [title];

    if (task.kind === "customer_visit") {
      const views = Array.isArray(task.recent_views) ? task.recent_views : [];
      const seen = views.map((view) => view.sku).join(", ");
      parts.push(element("div", "detail", seen ? `Recently viewed: ${seen}` : "No recent views"));
    } else {
      parts.push(element("div", "detail", linesText(task.lines)));
    }
    if (task.kind === "pickup_exception") {
      const alternative = task.alternative_location_id
        ? `Not covered here: offer pickup at ${task.alternative_location_id}`
        : "Not covered here and no other pickup store has it";
      parts.push(element("div", "detail alternative", alternative));
      if (task.reason) parts.push(element("div", "detail", task.reason));
    }
    if (task.status === "done" && task.done_at) {
      parts.push(element("div", "due", `${label} at ${clock(task.done_at)}`));
    } else if (!isClosed(task) && task.due_at) {
      const left = dueMs(task) - now;
      const when = Number.isNaN(left)
        ? `due ${task.due_at}`
        : overdue
          ? `due ${clock(task.due_at)} · overdue by ${minutes(left)}`
          : `due ${clock(task.due_at)} · in ${minutes(left)}`;
      parts.push(element("div", "due", when));
    }
    if (task.pickup_code && task.kind !== "customer_visit") {
      const code = element("div", "code", task.pickup_code);
      code.title = "pickup code";
      parts.push(code);
    }
    row.replaceChildren(...parts);
  }

  function order(a, b) {
    if (isClosed(a) && isClosed(b)) {
      return (b.done_at || "").localeCompare(a.done_at || "") || a.task_id.localeCompare(b.task_id);
    }
    const da = dueMs(a);
    const db = dueMs(b);
    if (Number.isNaN(da) !== Number.isNaN(db)) return Number.isNaN(da) ? 1 : -1;
    return (da - db || 0) || a.task_id.localeCompare(b.task_id);
  }

  function render() {
    const now = Date.now();
    for (const [taskId, row] of rows) {
      if (!tasks.has(taskId)) {
        row.remove();
        rows.delete(taskId);
      }
    }
    const grouped = { pickups: [], exceptions: [], visits: [], closed: [] };
    for (const task of tasks.values()) grouped[listOf(task)].push(task);
    for (const [name, members] of Object.entries(grouped)) {
      members.sort(order);
      for (const task of members) {
        let row = rows.get(task.task_id);
        if (!row) {
          row = element("li", "task");
          rows.set(task.task_id, row);
        }
        fill(row, task, now);
        lists[name].append(row); // moves an existing row: it stays the same element
      }
      document.getElementById(`${name}-count`).textContent = String(members.length);
    }
  }

  function setConnection(state, text) {
    connection.dataset.state = state;
    connection.textContent = text;
  }

  let source = null;

  function subscribe() {
    source = new EventSource(`/stores/${encodeURIComponent(storeId)}/events`);
    source.addEventListener("snapshot", (event) => {
      tasks.clear();
      for (const task of JSON.parse(event.data).tasks) tasks.set(task.task_id, task);
      render();
      setConnection("live", "live");
    });
    source.addEventListener("task", (event) => {
      const task = JSON.parse(event.data);
      tasks.set(task.task_id, task);
      render();
    });
    source.addEventListener("removed", (event) => {
      tasks.delete(JSON.parse(event.data).task_id);
      render();
    });
    source.addEventListener("unavailable", () => {
      setConnection("down", "stock service unavailable, retrying…");
    });
    source.addEventListener("error", () => {
      setConnection("down", "connection lost, reconnecting…");
    });
  }

  // A page left for another stays alive in the back-forward cache, and so would its stream:
  // close it on the way out and subscribe again (a fresh snapshot) if the page comes back.
  window.addEventListener("pagehide", () => {
    if (source) source.close();
    source = null;
  });
  window.addEventListener("pageshow", (event) => {
    if (event.persisted && !source) {
      setConnection("connecting", "reconnecting…");
      subscribe();
    }
  });
  subscribe();
  setInterval(render, 1000); // due times move on, and open tasks turn overdue, on their own
})();
