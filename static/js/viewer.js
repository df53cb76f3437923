/* cxr-review case viewer: window/level, zoom and pan, invert, fit / full resolution on the stored film;
   the heat map drawn by the page itself (opacity, colour map, iso-line contours, hold-to-flash).

   Progressive enhancement over the case page's plain images (templates/case.html; the controls are
   templates/_viewer.html): each figure of #viewer gets a port (a clipping box) holding a stage (the film
   picture at "fit" size, moved and scaled with one CSS transform). The stage of the heat-map figure
   holds a canvas with the film's grey values through the window/level LUT, a canvas with the heat map
   coloured by the page, an SVG of its iso-lines, the lung outline and the server's overlay image (kept,
   invisible, as the picture the reviewer boxes of review.js are measured on). The plain-film figure's
   stage shows a copy of the same film canvas; both share one state, so side by side stays in step.

   The film pixels are /api/v1/images/<sha>.png at full resolution (for DICOM: after its modality LUT and
   VOI, applied by the server); for a DICOM film they are then replaced by its modality values, windowed
   in the file's units from the file's own window (static/js/viewer-film.js). The heat map's values are
   .../heat-maps/<model>/<cls>.png (8-bit grey, 0 = no evidence, 255 = the map's maximum); colours come
   from the legend strip of the chosen colour map (/legend/colorbar.png?cmap=..., column i = value i), so
   page and server use one table.
   Keys (ignored while typing; listed by ? in templates/_viewer.html); the class keys and A R H F S L N
   stay in review.js. Colour map, opacity and contours are kept in localStorage; W/L and zoom are not. */
(function () {
  "use strict";

  var FILM = window.cxrFilm;  // static/js/viewer-film.js: the film's values and their window/level
  var PRESETS = {  // film percentiles the window spans (over the film's own histogram, 8 or 16 bits)
    lung: [0.005, 0.95],        // all but the brightest 5 %: contrast across the lung fields
    mediastinum: [0.30, 0.998], // the brighter two thirds: heart, mediastinum, the spine behind it
    bone: [0.55, 0.9995],       // the brightest part: ribs, clavicles, devices
  };
  var PRESET_ORDER = ["default", "lung", "mediastinum", "bone"];
  var CONTOUR_LEVELS = [0.25, 0.5, 0.75, 0.9];
  var PREFS_KEY = "cxr-viewer-prefs";
  var NOT_TYPED = { checkbox: true, radio: true, button: true, submit: true, reset: true };
  var MIN_ZOOM = 0.5, MAX_ZOOM = 16;
  var SVG_NS = "http://www.w3.org/2000/svg";

  function typingIn(target) {
    if (!target || !target.tagName) return false;
    var tag = target.tagName.toLowerCase();
    if (tag === "input") return !NOT_TYPED[(target.type || "").toLowerCase()];
    return tag === "textarea" || tag === "select" || target.isContentEditable;
  }
  function clamp(v, lo, hi) { return Math.min(hi, Math.max(lo, v)); }
  function el(tag, cls) { var e = document.createElement(tag); if (cls) e.className = cls; return e; }
  function loadPrefs() {
    try { return JSON.parse(window.localStorage.getItem(PREFS_KEY) || "{}") || {}; } catch (err) { return {}; }
  }
  function savePrefs(p) {
    try { window.localStorage.setItem(PREFS_KEY, JSON.stringify(p)); } catch (err) { /* private mode: not kept */ }
  }
  var DEFAULT_CMAP = "inferno";  // the server's default (app.services.predictions.OVERLAY_COLORMAP)
  function withCmap(url, cmap) {  // the default map is the plain URL (what the page was served with)
    var u = new URL(url, window.location.href);
    if (cmap === DEFAULT_CMAP) u.searchParams.delete("cmap"); else u.searchParams.set("cmap", cmap);
    return u.pathname + u.search;
  }
  /* ---------------------------------------------------------------- iso-lines (marching squares) */
  var CASES = {  // corner bits: top-left 8, top-right 4, bottom-right 2, bottom-left 1 → edge pairs
    1: [["L", "B"]], 2: [["B", "R"]], 3: [["L", "R"]], 4: [["T", "R"]], 5: [["T", "R"], ["L", "B"]],
    6: [["T", "B"]], 7: [["T", "L"]], 8: [["T", "L"]], 9: [["T", "B"]], 10: [["T", "L"], ["B", "R"]],
    11: [["T", "R"]], 12: [["L", "R"]], 13: [["B", "R"]], 14: [["L", "B"]],
  };
  function contourPath(map, level, step) {
    var w = map.w, h = map.h, v = map.v, t = level * 255, parts = [];
    function at(x, y) { return v[Math.min(h - 1, y) * w + Math.min(w - 1, x)]; }
    function cut(a, b) { return a === b ? 0.5 : (t - a) / (b - a); }
    for (var y = 0; y + step < h + step - 1; y += step) {
      for (var x = 0; x + step < w + step - 1; x += step) {
        var a = at(x, y), b = at(x + step, y), c = at(x + step, y + step), d = at(x, y + step);
        var k = (a >= t ? 8 : 0) | (b >= t ? 4 : 0) | (c >= t ? 2 : 0) | (d >= t ? 1 : 0);
        var segs = CASES[k];
        if (!segs) continue;
        var pts = {
          T: [x + cut(a, b) * step, y], R: [x + step, y + cut(b, c) * step],
          B: [x + cut(d, c) * step, y + step], L: [x, y + cut(a, d) * step],
        };
        for (var s = 0; s < segs.length; s++) {
          var p = pts[segs[s][0]], q = pts[segs[s][1]];
          parts.push("M" + (p[0] + 0.5).toFixed(1) + " " + (p[1] + 0.5).toFixed(1) +
            "L" + (q[0] + 0.5).toFixed(1) + " " + (q[1] + 0.5).toFixed(1));
        }
      }
    }
    return parts.join("");
  }

  /* ---------------------------------------------------------------- the case viewer */
  function initViewer() {
    var viewer = document.getElementById("viewer");
    var tools = document.getElementById("vw-tools");
    var overlayImg = document.getElementById("overlay-main");
    var filmImg = viewer && viewer.querySelector(".view-film img");
    if (!viewer || !tools || !overlayImg || !filmImg || !window.Promise || !FILM) return;
    var loadImage = FILM.loadImage, pixelsOf = FILM.pixelsOf, lutOf = FILM.lutOf;
    var $ = function (id) { return document.getElementById(id); };
    var prefs = loadPrefs();
    var colormaps = (tools.dataset.colormaps || DEFAULT_CMAP).split(",");
    DEFAULT_CMAP = colormaps[0];
    var state = {
      z: 1, cx: 0.5, cy: 0.5, center: 127.5, width: 255, preset: "default", invert: false,
      opacity: typeof prefs.opacity === "number" ? clamp(prefs.opacity, 0, 1) : 0.5,
      contours: !!prefs.contours, cmap: colormaps.indexOf(prefs.cmap) >= 0 ? prefs.cmap : colormaps[0],
      tool: "wl",
    };
    var film = null, cdf = null, maps = {}, lut = null, current = null;

    // --- build the two ports and stages around the existing images
    var stageA = overlayImg.closest(".layered");
    var portA = el("div", "vw-port");
    stageA.parentNode.insertBefore(portA, stageA);
    portA.appendChild(stageA);
    stageA.classList.add("vw-stage");
    var regionLayer = $("region-layer");
    if (regionLayer) portA.appendChild(regionLayer);  // boxes are measured on the (moved) overlay image
    var filmA = el("canvas", "vw-film");
    var heat = el("canvas", "vw-heat");
    var svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("class", "vw-contours");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("aria-hidden", "true");
    stageA.insertBefore(svg, stageA.firstChild);
    stageA.insertBefore(heat, svg);
    stageA.insertBefore(filmA, heat);
    overlayImg.classList.add("vw-fallback");

    var filmFig = filmImg.closest("figure");
    var portB = el("div", "vw-port");
    var stageB = el("div", "vw-stage layered");
    var filmB = el("canvas", "vw-film");
    filmFig.insertBefore(portB, filmImg);
    portB.appendChild(stageB);
    stageB.appendChild(filmB);
    stageB.appendChild(filmImg);
    filmImg.classList.add("vw-fallback");
    var ports = [{ port: portA, stage: stageA }, { port: portB, stage: stageB }];

    // --- geometry: the stage is the film at fit size; state (zoom z, centre cx/cy as film fractions) moves it
    function natural() {
      return film ? { w: film.w, h: film.h } : { w: overlayImg.naturalWidth || 1, h: overlayImg.naturalHeight || 1 };
    }
    function fitOf(port) {
      var n = natural();
      var pw = port.clientWidth, ph = port.clientHeight;
      return { pw: pw, ph: ph, scale: Math.min(pw / n.w, ph / n.h) || 1, n: n };
    }
    function visiblePort() {
      return ports.filter(function (p) { return p.port.offsetParent !== null && p.port.clientWidth > 0; })[0];
    }
    function clampCentre() {
      var p = visiblePort();
      if (!p) return;
      var f = fitOf(p.port), sw = f.n.w * f.scale * state.z, sh = f.n.h * f.scale * state.z;
      state.cx = sw <= f.pw ? 0.5 : clamp(state.cx, f.pw / 2 / sw, 1 - f.pw / 2 / sw);
      state.cy = sh <= f.ph ? 0.5 : clamp(state.cy, f.ph / 2 / sh, 1 - f.ph / 2 / sh);
    }
    function place() {
      clampCentre();
      copyFilmB();
      ports.forEach(function (p) {
        var f = fitOf(p.port);
        if (!f.pw) return;
        var w = f.n.w * f.scale, h = f.n.h * f.scale;
        p.stage.style.width = w + "px";
        p.stage.style.height = h + "px";
        var left = f.pw / 2 - state.cx * w * state.z, top = f.ph / 2 - state.cy * h * state.z;
        p.stage.style.transform = "translate(" + left.toFixed(2) + "px," + top.toFixed(2) + "px) scale(" + state.z + ")";
        p.port.classList.toggle("is-zoomed", state.z > 1.001);
      });
      svg.style.setProperty("--vw-zoom", String(state.z));
      var p = visiblePort();
      var full = p ? state.z * fitOf(p.port).scale * (window.devicePixelRatio || 1) : state.z;
      $("vw-zoom").textContent = Math.round(full * 100) + " %";
      $("vw-native").setAttribute("aria-pressed", String(Math.abs(full - 1) < 0.01));
      viewer.dataset.zoom = state.z.toFixed(3);
      document.dispatchEvent(new CustomEvent("cxr:viewer-moved"));  // review.js keeps the boxes on the picture
    }
    function zoomTo(z, px, py, port) {  // keep the film point under (px, py) of `port` where it is
      z = clamp(z, MIN_ZOOM, MAX_ZOOM);
      var p = port || (visiblePort() || ports[0]).port;
      var f = fitOf(p), w = f.n.w * f.scale, h = f.n.h * f.scale;
      if (px === undefined) { px = f.pw / 2; py = f.ph / 2; }
      var fx = state.cx + (px - f.pw / 2) / (w * state.z), fy = state.cy + (py - f.ph / 2) / (h * state.z);
      state.cx = fx - (px - f.pw / 2) / (w * z);
      state.cy = fy - (py - f.ph / 2) / (h * z);
      state.z = z;
      place();
    }
    function fit() { state.z = 1; state.cx = 0.5; state.cy = 0.5; place(); }
    function native() {
      var p = visiblePort();
      if (!p) return;
      var target = 1 / (fitOf(p.port).scale * (window.devicePixelRatio || 1));
      if (Math.abs(state.z - target) < 1e-3) fit(); else zoomTo(target);
    }
    function pan(dx, dy) {  // in screen fractions of the port
      state.cx += dx / state.z;
      state.cy += dy / state.z;
      place();
    }

    // --- the film through window/level
    var ctxA = filmA.getContext("2d"), ctxB = filmB.getContext("2d"), out = null, out32 = null, filmBStale = true;
    function setWindow(win) { state.center = win.center; state.width = win.width; }
    function setPreset(name) {
      state.preset = name;
      if (name === "default" || !cdf) setWindow(film ? FILM.defaultWindow(film) : { center: 127.5, width: 255 });
      else if (PRESETS[name]) setWindow(FILM.percentileWindow(film, cdf, PRESETS[name][0], PRESETS[name][1]));
      drawFilm();
    }
    function drawFilm() {
      var sel = $("vw-preset");
      sel.value = state.preset;
      $("vw-wl").textContent = film ? FILM.readout(film, state.center, state.width)
        : "W " + Math.round(state.width) + " · L " + Math.round(state.center);
      $("vw-invert").setAttribute("aria-pressed", String(state.invert));
      viewer.dataset.window = Math.round(state.width);
      viewer.dataset.level = Math.round(state.center);
      viewer.dataset.invert = String(state.invert);
      if (!film) return;
      var table = FILM.table(film, state.center, state.width, state.invert), src = film.v;
      for (var i = 0; i < src.length; i++) out32[i] = table[src[i]];
      ctxA.putImageData(out, 0, 0);
      filmBStale = true;
      copyFilmB();
    }
    function copyFilmB() {  // the plain-film figure's copy, only while it is shown (a 2560-px film: ~30 ms)
      if (!filmBStale || !film || portB.offsetParent === null) return;
      ctxB.drawImage(filmA, 0, 0);
      filmBStale = false;
    }
    var pendingFilm = false;
    function drawFilmSoon() {
      if (pendingFilm) return;
      pendingFilm = true;
      window.requestAnimationFrame(function () { pendingFilm = false; drawFilm(); });
    }
    function adjustWindow(dWidth, dLevel) {  // in grey levels of an 8-bit film (DICOM: 256ths of its range)
      var s = film ? FILM.step(film) : 1, sign = film ? FILM.levelSign(film) : 1;
      if (film) setWindow(FILM.limit(film, {
        center: state.center + dLevel * s * sign, width: state.width + dWidth * s,
      }));
      state.preset = "custom";
      drawFilmSoon();
    }

    // --- the heat map: fill (colour, alpha up to the opacity) or iso-lines
    var ctxH = heat.getContext("2d");
    function drawHeat() {
      $("vw-opacity").value = String(Math.round(state.opacity * 100));
      $("vw-cmap").value = state.cmap;
      $("vw-contour").setAttribute("aria-pressed", String(state.contours));
      viewer.dataset.opacity = state.opacity.toFixed(2);
      viewer.dataset.heatMode = state.contours ? "contours" : "fill";
      viewer.dataset.cmap = state.cmap;
      var map = current && maps[current];
      if (!map || !lut) return;
      if (state.contours) {
        ctxH.clearRect(0, 0, heat.width, heat.height);
        drawContours(map);
        return;
      }
      while (svg.firstChild) svg.removeChild(svg.firstChild);
      if (heat.width !== map.w || heat.height !== map.h) { heat.width = map.w; heat.height = map.h; }
      var img = ctxH.createImageData(map.w, map.h), d = img.data, v = map.v, a = state.opacity;
      for (var i = 0, j = 0; i < v.length; i++, j += 4) {
        var k = v[i] * 4;
        d[j] = lut[k]; d[j + 1] = lut[k + 1]; d[j + 2] = lut[k + 2];
        d[j + 3] = Math.round(a * v[i]);  // the server's blend: alpha grows with the value, up to the opacity
      }
      ctxH.putImageData(img, 0, 0);
    }
    function drawContours(map) {
      while (svg.firstChild) svg.removeChild(svg.firstChild);
      svg.setAttribute("viewBox", "0 0 " + map.w + " " + map.h);
      svg.style.opacity = String(Math.min(1, state.opacity * 2));
      var step = Math.max(1, Math.round(Math.max(map.w, map.h) / 256));
      CONTOUR_LEVELS.forEach(function (level) {
        var d = contourPath(map, level, step);
        if (!d) return;
        var k = Math.round(255 * (0.3 + 0.7 * level)) * 4;  // the low end of the maps is too dark on a film
        ["vw-halo", "vw-line"].forEach(function (cls) {
          var path = document.createElementNS(SVG_NS, "path");
          path.setAttribute("d", d);
          path.setAttribute("class", cls);
          path.setAttribute("vector-effect", "non-scaling-stroke");
          path.dataset.level = String(level);
          if (cls === "vw-line") path.setAttribute("stroke", "rgb(" + lut[k] + "," + lut[k + 1] + "," + lut[k + 2] + ")");
          svg.appendChild(path);
        });
      });
    }
    function showClass(cls) {
      current = cls;
      if (maps[cls]) { drawHeat(); return; }
      loadImage(tools.dataset.heatUrl.replace("{cls}", cls)).then(function (img) {
        maps[cls] = pixelsOf(img);
        if (current === cls) { drawHeat(); portA.classList.add("has-heat"); }
      }).catch(function () { portA.classList.remove("has-heat"); });  // the server's overlay stays
    }
    function setCmap(name) {
      state.cmap = name;
      prefs.cmap = name;
      savePrefs(prefs);
      applyCmap(name);
      var bar = $("colorbar");
      loadImage(bar ? bar.getAttribute("src") : withCmap("/legend/colorbar.png", name)).then(function (img) {
        if (state.cmap !== name) return;
        lut = lutOf(img);
        drawHeat();
      });
      drawHeat();
    }
    function setOpacity(a) {
      state.opacity = clamp(Math.round(a * 100) / 100, 0, 1);
      prefs.opacity = state.opacity;
      savePrefs(prefs);
      drawHeat();
    }
    function setContours(on) {
      state.contours = on;
      prefs.contours = on;
      savePrefs(prefs);
      drawHeat();
    }

    // --- flash: while X (or the button) is held, the other view
    function flash(on) { viewer.classList.toggle("vw-flash", on); }

    // --- controls
    $("vw-preset").addEventListener("change", function (e) { setPreset(e.target.value); });
    $("vw-invert").addEventListener("click", function () { state.invert = !state.invert; drawFilm(); });
    $("vw-zoom-in").addEventListener("click", function () { zoomTo(state.z * 1.25); });
    $("vw-zoom-out").addEventListener("click", function () { zoomTo(state.z / 1.25); });
    $("vw-fit").addEventListener("click", fit);
    $("vw-native").addEventListener("click", native);
    $("vw-opacity").addEventListener("input", function (e) { setOpacity(Number(e.target.value) / 100); });
    $("vw-cmap").addEventListener("change", function (e) { setCmap(e.target.value); });
    $("vw-contour").addEventListener("click", function () { setContours(!state.contours); });
    var flashBtn = $("vw-flash");
    flashBtn.addEventListener("pointerdown", function () { flash(true); });
    ["pointerup", "pointerleave", "pointercancel"].forEach(function (t) { flashBtn.addEventListener(t, function () { flash(false); }); });
    var help = $("vw-help");
    function toggleHelp() {
      if (!help.showModal) return;
      if (help.open) help.close(); else help.showModal();
    }
    $("vw-help-open").addEventListener("click", toggleHelp);
    document.addEventListener("keydown", function (e) {  // behind the open help, no key acts on the case
      if (help.open && e.key !== "Escape" && e.key !== "?") e.stopPropagation();
    }, true);

    ports.forEach(function (p) {
      p.port.addEventListener("wheel", function (e) {
        e.preventDefault();
        var r = p.port.getBoundingClientRect();
        zoomTo(state.z * Math.pow(1.0015, -e.deltaY), e.clientX - r.left, e.clientY - r.top, p.port);
      }, { passive: false });
      var drag = null;
      p.port.addEventListener("pointerdown", function (e) {
        if (e.target.closest(".region-layer.is-drawing, button")) return;  // drawing a box, removing one
        if (e.button !== 0 && e.button !== 1) return;
        e.preventDefault();
        var panning = e.button === 1 || e.shiftKey || state.tool === "pan";
        drag = { x: e.clientX, y: e.clientY, pan: panning };
        p.port.setPointerCapture(e.pointerId);
        p.port.classList.add(panning ? "is-panning" : "is-windowing");
      });
      p.port.addEventListener("pointermove", function (e) {
        if (!drag) return;
        var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
        drag.x = e.clientX;
        drag.y = e.clientY;
        if (drag.pan) pan(-dx / p.port.clientWidth, -dy / p.port.clientHeight);
        else adjustWindow(dx, dy);  // right: a wider window; up: a lower level (brighter), down: darker
      });
      function end() { drag = null; p.port.classList.remove("is-panning", "is-windowing"); }
      p.port.addEventListener("pointerup", end);
      p.port.addEventListener("pointercancel", end);
      p.port.addEventListener("dblclick", fit);
    });

    document.addEventListener("keydown", function (e) {
      if (e.key === "Escape" && e.target.closest && e.target.closest("#vw-tools")) {
        e.target.blur();  // out of a select or the slider: the viewer's keys work again
        return;
      }
      if (e.ctrlKey || e.metaKey || e.altKey || typingIn(e.target)) return;
      if (help.open && e.key !== "?") return;  // the dialog: Esc closes it
      var k = e.key, handled = true;
      if (k === "+" || k === "=") zoomTo(state.z * 1.25);
      else if (k === "-" || k === "_") zoomTo(state.z / 1.25);
      else if (k === "0") fit();
      else if (k === "z" || k === "Z") native();
      else if (k.indexOf("Arrow") === 0 && e.shiftKey) {
        if (k === "ArrowUp") adjustWindow(0, -5);        // lower level: brighter
        else if (k === "ArrowDown") adjustWindow(0, 5);  // higher level: darker
        else adjustWindow(k === "ArrowRight" ? 10 : -10, 0);
      } else if (k.indexOf("Arrow") === 0 && state.z > 1.001) {
        pan(k === "ArrowLeft" ? -0.1 : k === "ArrowRight" ? 0.1 : 0, k === "ArrowUp" ? -0.1 : k === "ArrowDown" ? 0.1 : 0);
      } else if (k === "w" || k === "W") {
        var i = PRESET_ORDER.indexOf(state.preset), n = PRESET_ORDER.length;
        setPreset(PRESET_ORDER[((i < 0 ? 0 : i) + (e.shiftKey ? n - 1 : 1)) % n]);
      } else if (k === "i" || k === "I") { state.invert = !state.invert; drawFilm(); }
      else if (k === "[") setOpacity(state.opacity - 0.1);
      else if (k === "]") setOpacity(state.opacity + 0.1);
      else if (k === "c" || k === "C") setContours(!state.contours);
      else if (k === "m" || k === "M") setCmap(colormaps[(colormaps.indexOf(state.cmap) + 1) % colormaps.length]);
      else if (k === "x" || k === "X") { if (!e.repeat) flash(true); }
      else if (k === "p" || k === "P") {
        state.tool = state.tool === "wl" ? "pan" : "wl";
        viewer.dataset.tool = state.tool;
      } else if (k === "?") toggleHelp();
      else handled = false;
      if (handled) e.preventDefault();
    });
    document.addEventListener("keyup", function (e) { if (e.key === "x" || e.key === "X") flash(false); });
    window.addEventListener("blur", function () { flash(false); });

    // --- follow review.js: the shown class (1–4, the rail) and the view mode (H F S)
    new MutationObserver(function () { showClass(overlayImg.dataset.cls); }).observe(overlayImg, { attributes: true, attributeFilter: ["data-cls"] });
    if (window.ResizeObserver) ports.forEach(function (p) { new ResizeObserver(place).observe(p.port); });
    window.addEventListener("resize", place);

    // --- start: the film's pixels, the colour table, the shown class's map
    tools.hidden = false;
    viewer.dataset.tool = state.tool;
    function useFilm(f) {  // the film's values: from the stored 8-bit film first, a DICOM's modality values next
      film = f;
      cdf = FILM.cdfOf(film);
      viewer.dataset.values = film.dicom ? "modality" : "8-bit";
      if (PRESETS[state.preset]) setPreset(state.preset);  // a preset chosen meanwhile: over the new values
      else setPreset("default");  // a window dragged on the 8-bit film means nothing in modality units
    }
    function filmReady() {
      var px;
      try { px = pixelsOf(filmImg); } catch (err) { return; }  // the plain images stay
      [filmA, filmB].forEach(function (c) { c.width = px.w; c.height = px.h; });
      out = ctxA.createImageData(px.w, px.h);
      out32 = new Uint32Array(out.data.buffer);
      useFilm(FILM.eightBit(px));
      viewer.classList.add("vw-ready");
      place();
      var valuesUrl = tools.dataset.valuesUrl;
      if (valuesUrl) {
        FILM.loadValues(valuesUrl, px.w, px.h).then(useFilm).catch(function (err) {
          viewer.dataset.values = "8-bit";  // the stored film stays: windowed in its 8 bits
          if (window.console) window.console.warn("viewer: " + err.message);
        });
      }
    }
    if (filmImg.complete && filmImg.naturalWidth) filmReady(); else filmImg.addEventListener("load", filmReady);
    setCmap(state.cmap);
    showClass(overlayImg.dataset.cls);
    drawFilm();
    place();
  }

  /* ---------------------------------------------------------------- other pages: the chosen colour map */
  function applyCmap(name) {
    document.querySelectorAll(".class-thumb").forEach(function (t) {
      t.dataset.src = withCmap(t.dataset.src, name);
      var img = t.querySelector("img.heatmap");
      if (img) setSrc(img, withCmap(img.getAttribute("src"), name));
    });
    document.querySelectorAll("#overlay-main, img[data-cmap-src]").forEach(function (img) {
      setSrc(img, withCmap(img.getAttribute("src"), name));
    });
    var bar = document.getElementById("colorbar");
    if (bar) setSrc(bar, withCmap(bar.getAttribute("src"), name));
  }
  function setSrc(img, src) {  // an unchanged src is not fetched again
    if (img.getAttribute("src") !== src) img.src = src;
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (document.getElementById("viewer")) { initViewer(); return; }
    var prefs = loadPrefs();
    if (prefs.cmap && document.querySelector("img[data-cmap-src]")) applyCmap(prefs.cmap);
  });
})();
