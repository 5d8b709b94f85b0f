// Live approval queue: the server pushes the page's rows (escaped server-side),
// the true pending counts and the next page's link over server-sent events
// whenever the pending holds change. The stream keeps the page's filters and order.
(function () {
  "use strict";
  var table = document.getElementById("approval-queue");
  var rows = document.getElementById("approval-rows");
  var status = document.getElementById("live-status");
  var next = document.getElementById("next-page");
  if (!table || !rows || !window.EventSource) { return; }
  var source = new EventSource(table.getAttribute("data-live") || "/console/events");
  source.addEventListener("approvals", function (event) {
    var page;
    try { page = JSON.parse(event.data); } catch (e) { return; }
    rows.innerHTML = page.rows;
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
  source.addEventListener("signed_out", function () {
    source.close();
    window.location.assign("/console/login");
  });
  source.onerror = function () {
    if (status) { status.textContent = "Live updates paused; reconnecting"; }
  };
})();
