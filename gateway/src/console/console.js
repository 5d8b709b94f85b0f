// The console's one script: live updates over server-sent events (the approval
// queue and the overview; the server renders and escapes every fragment), the
// queue's keyboard, confirmation of large approvals, and loading a policy file
// into the what-if form. Every page works without it.
(function () {
  "use strict";

  function signedOut(source) {
    source.addEventListener("signed_out", function () {
      source.close();
      window.location.assign("/console/login");
    });
  }

  // ---- the approval queue, live ----
  var table = document.getElementById("approval-queue");
  var rows = document.getElementById("approval-rows");
  var status = document.getElementById("live-status");
  var next = document.getElementById("next-page");
  var selected = null;

  function rowList() {
    return rows ? Array.prototype.slice.call(rows.querySelectorAll("tr[data-approval]")) : [];
  }

  // Marks `row` as the one the keys act on; moves the focus to its first button
  // when asked (not when a live update redraws the rows while the operator is
  // elsewhere on the page).
  function select(row, focus) {
    if (selected) { selected.classList.remove("selected"); }
    selected = row;
    if (!row) { return; }
    row.classList.add("selected");
    var button = row.querySelector("button");
    if (button && focus) { button.focus(); }
  }

  if (table && rows && window.EventSource) {
    var queue = new EventSource(table.getAttribute("data-live") || "/console/events");
    queue.addEventListener("approvals", function (event) {
      var page;
      try { page = JSON.parse(event.data); } catch (e) { return; }
      var keep = selected ? selected.getAttribute("data-approval") : null;
      var focused = rows.contains(document.activeElement);
      rows.innerHTML = page.rows;
      selected = null;
      if (keep) {
        var again = rows.querySelector("tr[data-approval=\"" + keep + "\"]");
        if (again) { select(again, focused); }
      }
      if (status) { status.textContent = page.status; }
      if (next) {
        if (page.next) {
          next.setAttribute("href", page.next);
          next.hidden = false;
        } else {
          next.hidden = true;
        }
      }
    });
    signedOut(queue);
    queue.onerror = function () {
      if (status) { status.textContent = "Live updates paused; reconnecting"; }
    };
  }

  // Approving more than ten times the tool's threshold asks first, whether by
  // button or key.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var ask = form && form.getAttribute && form.getAttribute("data-confirm");
    if (ask && !window.confirm(ask)) { event.preventDefault(); }
  }, true);

  function submit(row, action) {
    var form = row && row.querySelector("form[action$=\"/" + action + "\"]");
    if (!form) { return; }
    var ask = form.getAttribute("data-confirm");
    if (ask && !window.confirm(ask)) { return; }
    form.removeAttribute("data-confirm");
    form.submit();
  }

  if (rows) {
    document.addEventListener("keydown", function (event) {
      var t = event.target;
      if (event.ctrlKey || event.metaKey || event.altKey) { return; }
      if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT")) { return; }
      var list = rowList();
      if (!list.length) { return; }
      var at = selected ? list.indexOf(selected) : -1;
      switch (event.key) {
        case "j": case "ArrowDown":
          select(list[Math.min(at + 1, list.length - 1)], true);
          break;
        case "k": case "ArrowUp":
          select(list[Math.max(at - 1, 0)], true);
          break;
        case "a":
          submit(selected, "approve");
          break;
        case "d":
          submit(selected, "deny");
          break;
        default:
          return;
      }
      event.preventDefault();
    });
  }

  // ---- the overview, live ----
  var overview = document.getElementById("overview");
  var overviewStatus = document.getElementById("overview-status");
  if (overview && window.EventSource) {
    var live = new EventSource(overview.getAttribute("data-live"));
    live.addEventListener("overview", function (event) {
      var data;
      try { data = JSON.parse(event.data); } catch (e) { return; }
      overview.innerHTML = data.html;
      if (overviewStatus) { overviewStatus.textContent = data.status; }
    });
    signedOut(live);
    live.onerror = function () {
      if (overviewStatus) { overviewStatus.textContent = "Live updates paused; reconnecting"; }
    };
  }

  // ---- what-if: a policy file read into the form ----
  var file = document.getElementById("w-file");
  var text = document.getElementById("w-policy");
  var name = document.getElementById("w-file-name");
  if (file && text && window.FileReader) {
    file.addEventListener("change", function () {
      var f = file.files && file.files[0];
      if (!f) { return; }
      var reader = new FileReader();
      reader.onload = function () {
        text.value = String(reader.result);
        if (name) { name.value = f.name; }
      };
      reader.readAsText(f);
    });
  }
})();
