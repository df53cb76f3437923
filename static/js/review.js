/* cxr-review reading station: small progressive enhancements. Every page works without this file
   (forms post, links navigate); with it:
   - case page: switch heat-map class (fixed keys: 1 normal, 2 bacterial, 3 viral, 4 COVID-19), view mode (H heat map / F plain film / S side by side)
     without reloading; L (or the checkbox) shows/hides the lung outline over the heat maps (shown on
     every page load); A = approve, R = reject (first R opens the reasons, second R submits),
     N = next waiting case after a save; while the reject panel is open, dragging on the heat map
     draws a box ("wrong evidence" or "finding"), sent with the verdict as JSON in `regions`;
   - upload page: refuse a file over the size limit before sending it; show progress on submit.
   Loaded in <head> without `defer` only to mark <html class="js"> before the first paint; the rest
   waits for DOMContentLoaded. External file only: the Content-Security-Policy forbids inline script. */
(function () {
  "use strict";
  document.documentElement.classList.remove("no-js");
  document.documentElement.classList.add("js");

  // Fixed class keys, whatever the rail's order (it is sorted by probability on each case).
  var CLASS_KEYS = { 1: "normal", 2: "bacterial", 3: "viral", 4: "covid19" };
  var NOT_TYPED = { checkbox: true, radio: true, button: true, submit: true, reset: true };

  function typingIn(target) {
    if (!target || !target.tagName) return false;
    var tag = target.tagName.toLowerCase();
    if (tag === "input") return !NOT_TYPED[(target.type || "").toLowerCase()];  // a ticked box takes no letters
    return tag === "textarea" || tag === "select" || target.isContentEditable;
  }

  function setQuery(params) {
    var url = new URL(window.location.href);
    Object.keys(params).forEach(function (k) { url.searchParams.set(k, params[k]); });
    url.searchParams.delete("saved");
    window.history.replaceState(null, "", url.pathname + url.search + url.hash);
  }

  /* ------------------------------------------------------------------ case page */
  function initCase() {
    var viewer = document.getElementById("viewer");
    if (!viewer) return;
    var overlay = document.getElementById("overlay-main");
    var caption = document.getElementById("overlay-caption");
    var focusCaption = document.getElementById("overlay-focus");
    var outlineToggle = document.getElementById("outline-toggle");
    var pane = viewer.closest(".viewer-pane") || document.body;
    var shown = document.getElementById("shown-class");
    var thumbs = Array.prototype.slice.call(document.querySelectorAll(".class-thumb"));
    var modeLinks = Array.prototype.slice.call(document.querySelectorAll("#view-switch a[data-view]"));

    function thumbOf(cls) {
      return thumbs.filter(function (t) { return t.dataset.cls === cls; })[0];
    }

    function selectClass(thumb) {
      overlay.src = thumb.dataset.src;
      overlay.alt = thumb.dataset.label + " heat map over the film";
      overlay.dataset.cls = thumb.dataset.cls;
      caption.textContent = thumb.dataset.label;
      if (focusCaption && thumb.dataset.focus) focusCaption.textContent = thumb.dataset.focus;
      if (shown) shown.querySelector("strong").textContent = thumb.dataset.label;
      thumbs.forEach(function (t) { t.classList.toggle("is-selected", t === thumb); });
      if (viewer.dataset.view === "film") setView("overlay");
      setQuery({ cls: thumb.dataset.cls });
      modeLinks.forEach(function (a) {
        var u = new URL(a.href, window.location.href);
        u.searchParams.set("cls", thumb.dataset.cls);
        a.href = u.pathname + u.search;
      });
    }

    function setView(mode) {
      viewer.dataset.view = mode;
      modeLinks.forEach(function (a) {
        if (a.dataset.view === mode) a.setAttribute("aria-current", "true");
        else a.removeAttribute("aria-current");
      });
      thumbs.forEach(function (t) {
        var u = new URL(t.href, window.location.href);
        u.searchParams.set("view", mode);
        t.href = u.pathname + u.search;
      });
      setQuery({ view: mode });
    }

    function showOutline(on) {
      pane.classList.toggle("hide-outline", !on);
      if (outlineToggle) outlineToggle.checked = on;
    }
    if (outlineToggle) {
      showOutline(true);  // a reload always starts with the outline on, whatever the browser restored
      outlineToggle.addEventListener("change", function () { showOutline(outlineToggle.checked); });
    }

    thumbs.forEach(function (t) {
      t.addEventListener("click", function (e) {
        if (e.ctrlKey || e.metaKey || e.shiftKey) return;
        e.preventDefault();
        selectClass(t);
      });
    });
    modeLinks.forEach(function (a) {
      a.addEventListener("click", function (e) {
        if (e.ctrlKey || e.metaKey || e.shiftKey) return;
        e.preventDefault();
        setView(a.dataset.view);
      });
    });

    var section = document.getElementById("verdict");
    var panel = document.getElementById("reject-panel");
    var rejectBtn = document.getElementById("reject-btn");
    var approveBtn = document.getElementById("approve-btn");
    var rejectSubmit = document.getElementById("reject-submit");
    var form = document.getElementById("verdict-form");

    var boxes = initRegions(overlay);

    function openReject() {
      panel.classList.add("is-open");
      section.classList.add("rejecting");
      if (viewer.dataset.view === "film") setView("overlay");
      if (boxes) boxes.drawing(true);
      var first = panel.querySelector("input");
      if (first) first.focus({ preventScroll: true });
    }
    if (rejectBtn && panel) {
      if (panel.querySelector("input:checked") || (boxes && boxes.count())) openReject();
      rejectBtn.addEventListener("click", function (e) {
        if (!panel.classList.contains("is-open")) {
          e.preventDefault();
          openReject();
        }
      });
    }
    if (approveBtn && panel) {
      approveBtn.addEventListener("click", function () {
        // Reasons and boxes describe a rejection: do not send them with an approval.
        panel.querySelectorAll("input[name=reasons], input[name=regions]").forEach(function (box) { box.disabled = true; });
      });
    }
    var drafts = form ? initDraft(form, panel, openReject, boxes) : null;
    var rejectError = document.getElementById("reject-client-error");

    function rejectProblem() {
      var ticked = Array.prototype.map.call(panel.querySelectorAll("input[name=reasons]:checked"), function (b) { return b.value; });
      if (!ticked.length) return "Tick at least one reason for the reject (or \u201cother\u201d with a comment).";
      var comment = form.querySelector("textarea[name=comment]");
      if (ticked.indexOf("other") >= 0 && comment && !comment.value.trim()) return "\u201cOther\u201d needs a comment: say what is wrong with the region.";
      return null;
    }

    if (form) {
      form.addEventListener("submit", function (e) {
        var button = e.submitter;
        if (button && button.value === "reject" && panel && panel.classList.contains("is-open")) {
          var problem = rejectProblem();
          if (problem) {
            e.preventDefault();
            rejectError.textContent = problem;
            rejectError.hidden = false;
            if (/comment/.test(problem)) {
              document.getElementById("extras").open = true;
              form.querySelector("textarea[name=comment]").focus();
            }
            return;
          }
        }
        if (drafts && button) drafts.save(button.value);
        // One click, one verdict: block double submits while the page reloads.
        window.setTimeout(function () {
          form.querySelectorAll("button[type=submit]").forEach(function (b) { b.disabled = true; });
        }, 0);
      });
    }

    document.addEventListener("keydown", function (e) {
      if (e.ctrlKey || e.metaKey || e.altKey || typingIn(e.target)) return;
      var key = e.key.toLowerCase();
      if (key === "a" && approveBtn) {
        e.preventDefault();
        approveBtn.click();
      } else if (key === "r" && rejectBtn) {
        e.preventDefault();
        if (panel && panel.classList.contains("is-open") && rejectSubmit) rejectSubmit.click();
        else rejectBtn.click();
      } else if (key === "l" && outlineToggle) {
        showOutline(!outlineToggle.checked);
      } else if (key === "h" || key === "f" || key === "s") {
        setView({ h: "overlay", f: "film", s: "side" }[key]);
      } else if (CLASS_KEYS[key] && thumbOf(CLASS_KEYS[key])) {
        selectClass(thumbOf(CLASS_KEYS[key]));
      } else if (key === "n" && document.getElementById("next-case")) {
        window.location.href = document.getElementById("next-case").href;
      } else if (key === "escape" && panel && panel.classList.contains("is-open")) {
        panel.classList.remove("is-open");
        section.classList.remove("rejecting");
        if (boxes) boxes.drawing(false);
        rejectBtn.focus();
      }
    });
  }

  /* ------------------------------------------------------------------ reviewer boxes */
  var KIND_LABELS = { wrong_evidence: "Wrong evidence", finding: "Finding" };
  var MIN_SIDE = 0.01;  // a click without a drag draws nothing

  function initRegions(image) {
    var layer = document.getElementById("region-layer");
    var input = document.getElementById("regions-input");
    var tools = document.getElementById("region-tools");
    var count = document.getElementById("region-count");
    if (!layer || !input || !tools || !image) return null;
    var kindButtons = Array.prototype.slice.call(document.querySelectorAll("[data-region-kind]"));
    var kind = "wrong_evidence";
    var regions = [];
    try {
      var stored = JSON.parse(input.value || "[]");
      if (Array.isArray(stored)) regions = stored;
    } catch (err) { regions = []; }

    // The heat map is drawn with object-fit: contain: the picture is the part of the <img> box that
    // keeps the film's aspect. Boxes are fractions of that picture (= of the film).
    function picture() {
      var box = image.getBoundingClientRect();
      var nw = image.naturalWidth || box.width, nh = image.naturalHeight || box.height;
      var scale = Math.min(box.width / nw, box.height / nh);
      var w = nw * scale, h = nh * scale;
      return { left: box.left + (box.width - w) / 2, top: box.top + (box.height - h) / 2, width: w, height: h };
    }
    function clamp(v) { return Math.min(1, Math.max(0, v)); }
    function at(e) {
      var p = picture();
      return [clamp((e.clientX - p.left) / p.width), clamp((e.clientY - p.top) / p.height)];
    }
    function place(el, b) {
      var p = picture(), l = layer.getBoundingClientRect();
      el.style.left = (p.left - l.left + b[0] * p.width) + "px";
      el.style.top = (p.top - l.top + b[1] * p.height) + "px";
      el.style.width = ((b[2] - b[0]) * p.width) + "px";
      el.style.height = ((b[3] - b[1]) * p.height) + "px";
    }
    function render() {
      var value = regions.length ? JSON.stringify(regions) : "";
      if (value !== input.value) {
        input.value = value;
        input.dispatchEvent(new Event("change", { bubbles: true }));  // the verdict draft keeps the boxes too
      }
      layer.querySelectorAll(".region-box").forEach(function (el) { el.remove(); });
      var kinds = { wrong_evidence: 0, finding: 0 };
      regions.forEach(function (r, i) {
        kinds[r.kind] = (kinds[r.kind] || 0) + 1;
        var el = document.createElement("div");
        el.className = "region-box kind-" + r.kind;
        el.title = KIND_LABELS[r.kind];
        el.textContent = String(i + 1);
        var remove = document.createElement("button");
        remove.type = "button";
        remove.className = "region-remove";
        remove.textContent = "\u00d7";
        remove.setAttribute("aria-label", "Remove box " + (i + 1));
        remove.addEventListener("pointerdown", function (e) { e.stopPropagation(); });  // not the start of a new box
        remove.addEventListener("click", function () { regions.splice(i, 1); render(); });
        el.appendChild(remove);
        place(el, r.box);
        layer.appendChild(el);
      });
      if (count) {
        var parts = [];
        if (kinds.wrong_evidence) parts.push(kinds.wrong_evidence + " wrong evidence");
        if (kinds.finding) parts.push(kinds.finding + " finding");
        count.textContent = parts.length ? "\u00b7 " + parts.join(", ") : "";
      }
    }

    kindButtons.forEach(function (b) {
      b.addEventListener("click", function () {
        kind = b.dataset.regionKind;
        kindButtons.forEach(function (o) { o.setAttribute("aria-pressed", String(o === b)); });
      });
    });

    var start = null, draft = null;
    layer.addEventListener("pointerdown", function (e) {
      if (!layer.classList.contains("is-drawing") || e.button !== 0) return;
      e.preventDefault();
      start = at(e);
      draft = document.createElement("div");
      draft.className = "region-box is-draft kind-" + kind;
      place(draft, [start[0], start[1], start[0], start[1]]);
      layer.appendChild(draft);
      layer.setPointerCapture(e.pointerId);
    });
    function spanTo(e) {
      var end = at(e);
      return [Math.min(start[0], end[0]), Math.min(start[1], end[1]), Math.max(start[0], end[0]), Math.max(start[1], end[1])];
    }
    layer.addEventListener("pointermove", function (e) { if (start) place(draft, spanTo(e)); });
    layer.addEventListener("pointerup", function (e) {
      if (!start) return;
      var b = spanTo(e).map(function (v) { return Math.round(v * 10000) / 10000; });
      start = null;
      draft.remove();
      if (b[2] - b[0] >= MIN_SIDE && b[3] - b[1] >= MIN_SIDE) regions.push({ kind: kind, box: b });
      render();
    });
    // the picture moves with the window and the view mode (heat map / side by side): keep boxes on it
    if (window.ResizeObserver) new ResizeObserver(function () { render(); }).observe(image);
    else window.addEventListener("resize", render);
    document.addEventListener("cxr:viewer-moved", function () { render(); });  // zoom and pan (viewer.js)
    if (image.complete) render(); else image.addEventListener("load", render);

    return {
      drawing: function (on) {
        layer.classList.toggle("is-drawing", on);
        tools.hidden = !on;
      },
      count: function () { return regions.length; },
      load: function (list) { regions = Array.isArray(list) ? list : []; render(); },
    };
  }

  /* ---------------------------------------------------- verdict drafts (nothing lost) */
  /* The verdict being written (choice, reasons, boxes, diagnosis, comment) is kept in sessionStorage under the
     form's data-draft-key on every change and on submit. It is removed only when the page comes back
     with data-saved (the server stored it). So a session that expired (submit → login → this page) or
     a stale form ("Form expired" → back) finds it again: restored into the form and offered with
     "Submit it" / "Discard", never dropped silently. */
  function initDraft(form, panel, openReject, boxes) {
    var regionsInput = form.querySelector("input[name=regions]");
    var key = "cxr-draft:" + form.dataset.draftKey;
    var store;
    try { store = window.sessionStorage; } catch (err) { return null; }
    if (!store) return null;

    function read() {
      try { return JSON.parse(store.getItem(key) || "null"); } catch (err) { return null; }
    }
    function current(verdict) {
      var previous = read();
      return {
        verdict: verdict || (previous && previous.verdict) || null,
        reasons: Array.prototype.map.call(form.querySelectorAll("input[name=reasons]:checked"), function (b) { return b.value; }),
        diagnosis: form.querySelector("select[name=diagnosis]").value,
        comment: form.querySelector("textarea[name=comment]").value,
        regions: regionsInput ? regionsInput.value : "",
      };
    }
    function meaningful(d) {
      return d && (d.verdict || d.reasons.length || d.diagnosis || d.comment.trim() || d.regions);
    }
    function save(verdict) {
      var d = current(verdict);
      if (meaningful(d)) store.setItem(key, JSON.stringify(d));
      else store.removeItem(key);
    }
    function clear() { store.removeItem(key); }

    if (form.dataset.saved) {
      clear();
    } else {
      var draft = read();
      if (meaningful(draft) && !form.dataset.formError) restore(draft);
    }
    form.addEventListener("change", function () { save(); });
    form.addEventListener("input", function () { save(); });

    function restore(d) {
      form.querySelectorAll("input[name=reasons]").forEach(function (b) { b.checked = d.reasons.indexOf(b.value) >= 0; });
      form.querySelector("select[name=diagnosis]").value = d.diagnosis || "";
      form.querySelector("textarea[name=comment]").value = d.comment || "";
      if (d.diagnosis || d.comment) document.getElementById("extras").open = true;
      if (d.regions && boxes) {
        try { boxes.load(JSON.parse(d.regions)); } catch (err) { boxes.load([]); }
      }
      if (d.verdict === "reject" || d.reasons.length || d.regions) openReject();
      var banner = document.getElementById("draft-banner");
      var text = document.getElementById("draft-text");
      var what = d.verdict === "approve" ? "An approval" : d.verdict === "reject" ? "A reject" : "A verdict";
      text.textContent = what + " you were writing here was not saved yet (the session or the form had expired); it is restored below.";
      banner.hidden = false;
      document.getElementById("draft-submit").hidden = !d.verdict;
      document.getElementById("draft-submit").addEventListener("click", function () {
        var button = d.verdict === "approve" ? document.getElementById("approve-btn") : document.getElementById("reject-submit");
        if (d.verdict === "reject") openReject();
        button.click();  // through the buttons' own handlers (an approval drops ticked reasons)
      });
      document.getElementById("draft-discard").addEventListener("click", function () {
        clear();
        form.reset();
        form.querySelectorAll("input[name=reasons]").forEach(function (b) { b.checked = false; });
        if (boxes) boxes.load([]);
        banner.hidden = true;
      });
    }
    return { save: save, clear: clear };
  }

  /* ------------------------------------------------------------------ upload page */
  function initUpload() {
    var form = document.getElementById("upload-form");
    if (!form) return;
    var limit = Number(form.dataset.maxBytes || 0);
    var input = form.querySelector("input[type=file]");
    var message = document.getElementById("upload-client-error");
    var button = form.querySelector("button[type=submit]");
    form.addEventListener("submit", function (e) {
      var file = input.files && input.files[0];
      if (file && limit && file.size > limit) {
        e.preventDefault();
        message.textContent = "The file is larger than the " + (limit / 1048576).toFixed(1) +
          " MiB upload limit (" + (file.size / 1048576).toFixed(1) + " MiB).";
        message.hidden = false;
        return;
      }
      message.hidden = true;
      window.setTimeout(function () {
        button.disabled = true;
        button.textContent = button.dataset.busyLabel || "Working…";
      }, 0);
    });
  }

  // A page restored from the back/forward cache after logout must not show a film: ask the server again
  // (every authenticated reply is no-store, so this only matters for browsers that cache regardless).
  window.addEventListener("pageshow", function (e) {
    if (e.persisted) window.location.reload();
  });

  document.addEventListener("DOMContentLoaded", function () {
    initCase();
    initUpload();
  });
})();
