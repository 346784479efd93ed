// mape-k console: confirmations, and the live decision stream. No inline script anywhere
// (the Content-Security-Policy forbids it); text from the daemon is set with textContent.
"use strict";

function confirmForms(root) {
  root.querySelectorAll("form[data-confirm]").forEach(function (form) {
    if (form.dataset.bound) return;
    form.dataset.bound = "1";
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
}

function cell(row, text) {
  var td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  row.appendChild(td);
  return td;
}

function when(seconds) {
  if (typeof seconds !== "number") return "—";
  return new Date(seconds * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

function addDecision(tbody, d) {
  var row = document.createElement("tr");
  row.className = "result-" + String(d.result || "") + " fresh";
  row.dataset.arrived = String(Date.now() / 1000);  // when it reached the page (unix s)
  var first = cell(row, "");
  var link = document.createElement("a");
  link.href = "/ui/decisions/" + encodeURIComponent(String(d.id));
  link.textContent = when(d.started_at);
  first.appendChild(link);
  cell(row, d.result);
  cell(row, (d.causes || []).join(", "));
  cell(row, d.action || "");
  cell(row, d.why).className = "why";
  tbody.insertBefore(row, tbody.firstChild);
  while (tbody.rows.length > 25)  // as many as the page shows
    tbody.deleteRow(tbody.rows.length - 1);
}

// The server's HTML of each panel section as last shown: a section is replaced only when
// the server's changed, and never while the operator is using it (focus, or text typed).
var shownPanels = {};

function rememberPanels(root) {
  root.querySelectorAll("#panels > section[id]").forEach(function (section) {
    shownPanels[section.id] = section.outerHTML;
  });
}

function inUse(section) {
  if (section.contains(document.activeElement) && document.activeElement !== document.body) {
    return true;
  }
  return Array.prototype.some.call(section.querySelectorAll("input[type=text], input[type=number]"),
    function (input) { return input.value !== ""; });
}

function refreshPanels(url) {
  fetch(url, { credentials: "same-origin" })
    .then(function (r) { return r.ok ? r.text() : null; })
    .then(function (html) {
      if (html == null) return;
      var doc = new DOMParser().parseFromString(html, "text/html");
      doc.querySelectorAll("#panels > section[id]").forEach(function (fresh) {
        var old = document.getElementById(fresh.id);
        if (!old || shownPanels[fresh.id] === fresh.outerHTML || inUse(old)) return;
        shownPanels[fresh.id] = fresh.outerHTML;
        var node = document.importNode(fresh, true);
        old.replaceWith(node);
        confirmForms(node);
      });
    })
    .catch(function () {});
}

// After a reconnect the decisions that came meanwhile were not streamed: take the table
// (rendered and escaped by the server) from a fresh copy of the page.
function reloadDecisions(table) {
  fetch(window.location.pathname, { credentials: "same-origin" })
    .then(function (r) { return r.ok ? r.text() : null; })
    .then(function (html) {
      if (html == null) return;
      var doc = new DOMParser().parseFromString(html, "text/html");
      var fresh = doc.querySelector("#decisions tbody");
      if (fresh) table.tBodies[0].replaceWith(document.importNode(fresh, true));
    })
    .catch(function () {});
}

function stream() {
  var table = document.getElementById("decisions");
  if (!table || !window.EventSource) return;
  var live = document.getElementById("live");
  var opened = false;
  var source = new EventSource(table.dataset.stream);
  source.onopen = function () {
    if (opened) {  // a reconnect: catch up on what the gap missed
      reloadDecisions(table);
      refreshPanels(table.dataset.panels);
    }
    opened = true;
    live.textContent = "live";
    live.className = "live on";
  };
  source.onerror = function () {
    live.textContent = "reconnecting…";
    live.className = "live off";
    if (source.readyState === EventSource.CLOSED) {
      // refused (503: too many streams; a login that expired): EventSource gives up for
      // good, so start again later; a reload shows the login page if that is the reason
      source.close();
      window.setTimeout(function () { stream(); reloadDecisions(table); }, 10000);
    }
  };
  source.addEventListener("decision", function (event) {
    var d;
    try { d = JSON.parse(event.data); } catch (e) { return; }
    addDecision(table.tBodies[0], d);
    refreshPanels(table.dataset.panels);
  });
}

document.addEventListener("DOMContentLoaded", function () {
  rememberPanels(document);  // before confirmForms marks the forms
  confirmForms(document);
  stream();
});
