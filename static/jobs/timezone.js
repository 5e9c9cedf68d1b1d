// The browser's time zone, sent once and kept in the session: the schedules and timeline pages then show
// their times in it (UTC on hover). Without this file they show UTC.
(function () {
  "use strict";

  var meta = document.querySelector('meta[name="user-time-zone"]');
  if (!meta || !window.fetch || !window.Intl) return;
  var zone;
  try {
    zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  } catch (e) {
    return;
  }
  var shown = meta.getAttribute("content");
  if (!zone || (zone === shown && meta.getAttribute("data-known") === "true")) return;
  // One try per zone and tab: a zone the server does not know must not reload the page again and again.
  var tried = "jobs-time-zone-sent:" + zone;
  try {
    if (window.sessionStorage.getItem(tried)) return;
    window.sessionStorage.setItem(tried, "1");
  } catch (e) {
    // No storage (private mode): the server's answer alone decides.
  }
  var body = new URLSearchParams();
  body.set("time_zone", zone);
  fetch(meta.getAttribute("data-url"), {
    method: "POST", body: body, credentials: "same-origin",
    headers: { "X-CSRFToken": meta.getAttribute("data-csrf") }
  }).then(function (response) {
    // Reloaded only when its times change: the page shows UTC until the zone is known.
    if (response.ok && zone !== shown) window.location.reload();
  }, function () { /* offline: times stay in UTC */ });
})();
