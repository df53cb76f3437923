/* cxr-review retraining pages: live progress of a training job.
   The job page works without this file (reload to refresh); with it, the page polls the job's API
   endpoint (session cookie; GET needs no CSRF token) and updates the progress bar, epoch, step,
   loss, time left and the per-epoch validation table. When the job ends, the page reloads once so
   the server renders the report (or the error). External file only: the CSP forbids inline script. */
(function () {
  "use strict";

  var CLASSES = ["normal", "bacterial", "viral", "covid19"];
  var FINAL = { succeeded: true, failed: true, cancelled: true };

  function pct(value, digits) {
    if (value === null || value === undefined || !isFinite(value)) return "–";
    return (100 * value).toFixed(digits === undefined ? 1 : digits) + " %";
  }
  function fixed(value, digits) {
    return value === null || value === undefined || !isFinite(value) ? "–" : Number(value).toFixed(digits);
  }
  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 90) return seconds + " s";
    var minutes = Math.round(seconds / 60);
    return minutes < 90 ? minutes + " min" : Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
  }
  function setText(id, text) {
    var el = document.getElementById(id);
    if (el && el.textContent !== text) el.textContent = text;
  }
  function cell(text) {
    var td = document.createElement("td");
    td.className = "num";
    td.textContent = text;
    return td;
  }

  function renderEpochs(history) {
    var body = document.getElementById("job-epochs");
    if (!body || !history) return;
    if (body.children.length === history.length) return;
    body.textContent = "";
    history.forEach(function (h) {
      var tr = document.createElement("tr");
      tr.appendChild(cell(h.epoch + (h.best ? " ★" : "")));
      tr.appendChild(cell(fixed(h.train_loss, 4)));
      tr.appendChild(cell(fixed(h.val_loss, 4)));
      tr.appendChild(cell(pct(h.val_accuracy)));
      tr.appendChild(cell(pct(h.val_macro_sensitivity)));
      CLASSES.forEach(function (c) { tr.appendChild(cell(pct((h.val_sensitivity || {})[c]))); });
      body.appendChild(tr);
    });
  }

  function render(box, job) {
    var bar = document.getElementById("job-progress");
    if (bar) {
      bar.value = job.progress;
      bar.textContent = pct(job.progress, 0);
    }
    var status = document.getElementById("job-status");
    if (status) {
      status.textContent = job.status;
      status.className = "status status-" + job.status;
    }
    setText("job-phase", job.cancel_requested && !FINAL[job.status] ? "cancelling…" : job.phase);
    setText("job-percent", pct(job.progress, 0));
    setText("job-epoch", (job.epoch || "–") + " / " + job.epochs);
    setText("job-step", job.step ? job.step + " / " + job.steps_per_epoch : "–");
    setText("job-loss", fixed(job.loss, 4));
    setText("job-eta", FINAL[job.status] ? "–" : duration(job.eta_seconds));
    setText("job-worker", job.worker_id || "–");
    renderEpochs((job.metrics || {}).history);
    box.dataset.status = job.status;
  }

  function initJob() {
    var box = document.getElementById("training-job");
    if (!box || FINAL[box.dataset.status]) return;
    var url = box.dataset.api;
    var interval = parseInt(box.dataset.pollMs, 10) || 1000;
    var failures = 0;

    function poll() {
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store" })
        .then(function (reply) {
          if (!reply.ok) throw new Error("HTTP " + reply.status);
          return reply.json();
        })
        .then(function (job) {
          failures = 0;
          render(box, job);
          if (FINAL[job.status]) {
            window.location.reload(); // the server renders the report or the error
            return;
          }
          window.setTimeout(poll, interval);
        })
        .catch(function () {
          failures += 1; // the server may be restarting: back off, keep trying
          setText("job-phase", "connection lost, retrying…");
          window.setTimeout(poll, Math.min(30000, interval * Math.pow(2, failures)));
        });
    }
    window.setTimeout(poll, interval);

    var cancel = document.getElementById("cancel-form");
    if (cancel) {
      cancel.addEventListener("submit", function (event) {
        if (!window.confirm("Cancel this training job? The work done so far is discarded.")) event.preventDefault();
      });
    }
  }

  document.addEventListener("DOMContentLoaded", initJob);
})();
