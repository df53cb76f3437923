/* cxr-review film-first reading (case page). The page opens on the plain film: the stylesheet hides
   everything marked .ai-part (probabilities, heat maps, lung-focus warnings) while the case grid has
   data-reading="film_first" and no .ai-shown. V or the "Show AI" button reveals it; the time from
   opening the page to the reveal goes into the verdict form's `ai_revealed_after_ms` ("none" while
   hidden), and the server keeps it with the verdict. While the AI is hidden, the keys and buttons
   that would show or judge it (H, S, L, 1-4, A, R) reveal nothing: A/R and the verdict buttons ask
   for the reveal first, since the verdict is about the highlighted region.
   Without this script the page shows everything and the verdict records "not known". */
(function () {
  "use strict";
  // and the viewer's heat-map keys: X flash, C contours, M colour map, [ ] opacity
  var HELD_KEYS = { h: true, s: true, l: true, 1: true, 2: true, 3: true, 4: true, a: true, r: true,
    x: true, c: true, m: true, "[": true, "]": true };

  function typingIn(t) {
    if (!t || !t.tagName) return false;
    var tag = t.tagName.toLowerCase();
    if (tag === "input") return ["checkbox", "radio", "button", "submit", "reset"].indexOf((t.type || "").toLowerCase()) < 0;
    return tag === "textarea" || tag === "select" || t.isContentEditable;
  }

  // When the page's first byte arrived, in performance.now()'s time: just after the server made the
  // reading token, so the reveal time counts from (about) the token's time, never before it.
  function pageArrived() {
    var nav = performance.getEntriesByType ? performance.getEntriesByType("navigation")[0] : null;
    return nav && nav.responseStart > 0 ? nav.responseStart : 0;
  }

  function init() {
    var grid = document.getElementById("case-grid");
    var field = document.getElementById("ai-revealed-after");
    if (!grid || !field || grid.dataset.reading !== "film_first") return;
    var button = document.getElementById("show-ai");
    var note = document.getElementById("film-first-note");
    function hidden() { return !grid.classList.contains("ai-shown"); }
    if (hidden()) field.value = "none";

    function reveal() {
      if (!hidden()) return;
      field.value = String(Math.round(performance.now() - pageArrived()));
      grid.classList.add("ai-shown");
      field.dispatchEvent(new Event("change", { bubbles: true }));  // the verdict draft keeps it
      var approve = document.getElementById("approve-btn");
      if (approve) approve.focus({ preventScroll: true });
    }
    function askFirst() {
      if (note) {
        note.classList.add("is-asking");
        note.innerHTML = "Show the AI first (<kbd>V</kbd>): the verdict is about the region the model highlights.";
      }
      if (button) button.focus({ preventScroll: true });
    }
    if (button) button.addEventListener("click", reveal);
    // A verdict restored from a draft (review.js) was chosen with the AI shown: sending it shows it again.
    var draftSubmit = document.getElementById("draft-submit");
    if (draftSubmit) draftSubmit.addEventListener("click", reveal, true);

    // Capture phase on window: runs before review.js's handlers on document.
    window.addEventListener("keydown", function (e) {
      if (e.ctrlKey || e.metaKey || e.altKey || typingIn(e.target)) return;
      var key = e.key.toLowerCase();
      if (key === "v") {
        e.preventDefault();
        reveal();
      } else if (hidden() && HELD_KEYS[key]) {
        e.preventDefault();
        e.stopImmediatePropagation();
        if (key === "a" || key === "r") askFirst();
      }
    }, true);
    var form = document.getElementById("verdict-form");
    if (form) {
      form.addEventListener("click", function (e) {
        var b = e.target && e.target.closest ? e.target.closest("button[type=submit]") : null;
        if (b && hidden()) {
          e.preventDefault();
          e.stopImmediatePropagation();
          askFirst();
        }
      }, true);
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
