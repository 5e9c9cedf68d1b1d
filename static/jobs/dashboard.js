// Progressive enhancement for the dashboard: every page works without this file.
(function () {
  "use strict";

  document.documentElement.classList.add("js");

  // --- Live parts poll only while the page is in view --------------------------------------
  // Here rather than as an hx-trigger filter: htmx runs those through eval, which the page's
  // Content-Security-Policy forbids.
  document.addEventListener("htmx:beforeRequest", function (event) {
    var elt = event.detail && event.detail.elt;
    var trigger = elt && elt.getAttribute ? elt.getAttribute("hx-trigger") || "" : "";
    if (/^every\s/.test(trigger) && document.visibilityState !== "visible") event.preventDefault();
  });

  // --- A submission the queue refused (503) is sent again by itself, with backoff ---------
  // The wait is the server's Retry-After or an exponential backoff with full jitter,
  // whichever is longer, so that many refused browsers do not come back at the same moment.
  var BACKOFF_BASE = 1;
  var BACKOFF_CAP = 60;
  var MAX_WAIT = 300;
  var retries = new WeakMap(); // form -> {attempt, timer}

  function refusalSummary(xhr) {
    try {
      var doc = new DOMParser().parseFromString(xhr.responseText || "", "text/html");
      var el = doc.getElementById("refusal-summary");
      return el ? el.textContent.replace(/\s+/g, " ").trim() : "";
    } catch (e) {
      return "";
    }
  }

  function stop(form) {
    var state = retries.get(form);
    if (state && state.timer) {
      clearInterval(state.timer);
      state.timer = null;
    }
  }

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    if (text) node.textContent = text;
    return node;
  }

  function schedule(form, retryAfter, headline, reason) {
    var state = retries.get(form) || { attempt: 0, timer: null };
    stop(form);
    state.attempt += 1;
    retries.set(form, state);
    var backoff = Math.random() * Math.min(BACKOFF_CAP, BACKOFF_BASE * Math.pow(2, state.attempt));
    var left = Math.ceil(Math.min(MAX_WAIT, Math.max(retryAfter || 0, backoff, 1)));

    var box = form.querySelector("[data-busy-status]");
    box.replaceChildren();
    var message = el("p");
    message.appendChild(el("strong", {}, headline + " "));
    message.appendChild(document.createTextNode(
      (reason ? reason + " " : "") + "Your job is not submitted yet; what you typed is kept. "));
    var countdown = el("span", { "data-countdown": "", "aria-live": "off" });
    message.appendChild(countdown);
    box.appendChild(message);
    var actions = el("p", { "class": "busy-actions" });
    var now = el("button", { type: "button", "class": "button button-small" }, "Try now");
    var cancel = el("button", { type: "button", "class": "button button-quiet button-small" }, "Stop retrying");
    now.addEventListener("click", function () { stop(form); form.requestSubmit(); });
    cancel.addEventListener("click", function () {
      stop(form);
      countdown.textContent = "Retrying stopped: submit again when you are ready.";
      actions.remove();
    });
    actions.appendChild(now);
    actions.appendChild(cancel);
    box.appendChild(actions);
    box.hidden = false;

    function tick() {
      countdown.textContent = "Trying again in " + left + " s (attempt " + (state.attempt + 1) + ").";
    }
    tick();
    state.timer = setInterval(function () {
      left -= 1;
      if (left <= 0) {
        stop(form);
        countdown.textContent = "Trying again now…";
        form.requestSubmit();
      } else {
        tick();
      }
    }, 1000);
  }

  function retryingForm(event) {
    var form = event.detail && event.detail.elt;
    return form instanceof HTMLFormElement && form.hasAttribute("data-busy-retry") ? form : null;
  }

  document.addEventListener("htmx:beforeRequest", function (event) {
    var form = retryingForm(event);
    if (form) stop(form);
  });

  document.addEventListener("htmx:afterRequest", function (event) {
    var form = retryingForm(event);
    var xhr = event.detail.xhr;
    if (!form || !xhr || xhr.status !== 503) return;
    var summary = refusalSummary(xhr);
    var brokerDown = /broker/i.test(summary);
    schedule(form, parseInt(xhr.getResponseHeader("Retry-After"), 10),
      brokerDown ? "Jobs cannot be queued right now." : "The queue is full.", summary);
  });

  document.addEventListener("htmx:sendError", function (event) {
    var form = retryingForm(event);
    if (form) schedule(form, 0, "The server could not be reached.", "");
  });

  // --- Forms that ask first (data-confirm): an action that cannot be undone --------------
  document.addEventListener("submit", function (event) {
    var form = event.target.closest("form[data-confirm]");
    if (form && !window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
  });

  // --- Copy buttons -----------------------------------------------------------------------
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) return;
    var input = document.querySelector(button.getAttribute("data-copy"));
    if (!input) return;
    input.select();
    var done = function () { button.textContent = "Copied"; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(input.value).then(done, function () { document.execCommand("copy"); done(); });
    } else {
      document.execCommand("copy");
      done();
    }
  });
})();
