// Live approval queue: the server pushes the rendered rows (escaped server-side)
// over server-sent events whenever the pending holds change.
(function () {
  "use strict";
  var rows = document.getElementById("approval-rows");
  var status = document.getElementById("live-status");
  if (!rows || !window.EventSource) { return; }
  var source = new EventSource("/console/events");
  source.addEventListener("approvals", function (event) {
    rows.innerHTML = event.data;
    var count = rows.querySelectorAll("tr[data-approval]").length;
    if (status) { status.textContent = "Live: " + count + " pending"; }
  });
  source.addEventListener("signed_out", function () {
    source.close();
    window.location.assign("/console/login");
  });
  source.onerror = function () {
    if (status) { status.textContent = "Live updates paused; reconnecting"; }
  };
})();
