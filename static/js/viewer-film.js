/* cxr-review case viewer: the film's grey values and their window/level, and the page's image helpers
   (used by static/js/viewer.js, loaded before it by templates/case.html; plain script, no build step).

   A film is { w, h, v, levels, dicom, offset, scale, inverted, minimum, maximum, windows, voi }: v holds
   one value per pixel, 0..levels-1, dense tissue high. An 8-bit film (PNG/JPEG, or a DICOM before its
   values arrive) is the stored grey PNG (levels 256, the window in grey levels). A DICOM film is its
   modality values from /api/v1/images/<sha>/values.json and .u16 (app/services/viewer.py): uint16 with
   modality value = offset + scale × v (scale < 0 where MONOCHROME1 was turned round), so the window is
   in the file's own units and starts at the file's window, drawn with the DICOM linear window of the
   server (ml/imageio.py `_linear_window`): the first picture is the stored 8-bit film, value for value. */
(function () {
  "use strict";

  function clamp(v, lo, hi) { return Math.min(hi, Math.max(lo, v)); }
  function roundHalfEven(x) {  // numpy's rounding, so a DICOM window gives the server's grey levels
    var r = Math.round(x);
    return (r - x === 0.5 && r % 2 !== 0) ? r - 1 : r;
  }

  function loadImage(src) {
    return new Promise(function (resolve, reject) {
      var img = new Image();
      img.onload = function () { resolve(img); };
      img.onerror = function () { reject(new Error("could not load " + src)); };
      img.src = src;
    });
  }
  function pixelsOf(img) {  // the red channel of a grey image: one byte per pixel
    var c = document.createElement("canvas");
    c.width = img.naturalWidth;
    c.height = img.naturalHeight;
    var ctx = c.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(img, 0, 0);
    var rgba = ctx.getImageData(0, 0, c.width, c.height).data;
    var out = new Uint8Array(c.width * c.height);
    for (var i = 0, j = 0; i < out.length; i++, j += 4) out[i] = rgba[j];
    return { w: c.width, h: c.height, v: out };
  }
  function lutOf(img) {  // the legend strip: 256 columns, column i = the colour of value i
    var c = document.createElement("canvas");
    c.width = 256;
    c.height = 1;
    var ctx = c.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(img, 0, 0, 256, 1, 0, 0, 256, 1);
    return ctx.getImageData(0, 0, 256, 1).data;
  }

  function eightBit(px) {
    return {
      w: px.w, h: px.h, v: px.v, levels: 256, dicom: false, offset: 0, scale: 1, inverted: false,
      minimum: 0, maximum: 255, windows: [], voi: null,
    };
  }

  function fetchOk(url, what) {
    return window.fetch(url, { credentials: "same-origin" }).then(function (r) {
      if (!r.ok) throw new Error(what + ": HTTP " + r.status);
      return r;
    });
  }
  /* The DICOM film's modality values; rejects (the 8-bit film stays) where they cannot be windowed
     linearly as the server did (a VOI LUT or a sigmoid window) or do not fit the 8-bit film's size. */
  function loadValues(url, w, h) {
    return fetchOk(url, "film values").then(function (r) { return r.json(); }).then(function (d) {
      if (d.dtype !== "uint16" || d.width !== w || d.height !== h) throw new Error("film values do not fit the film");
      if (d.voi !== null && d.voi !== "window") throw new Error("film values: the server draws VOI " + d.voi);
      return fetchOk(d.data_url, "film values").then(function (r) { return r.arrayBuffer(); }).then(function (buf) {
        var v = new Uint16Array(buf);
        if (v.length !== w * h) throw new Error("film values: " + v.length + " values for " + w + "×" + h);
        if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {  // a big-endian machine: swap the bytes
          for (var i = 0; i < v.length; i++) v[i] = ((v[i] & 255) << 8) | (v[i] >> 8);
        }
        var top = 0;
        for (var j = 0; j < v.length; j++) if (v[j] > top) top = v[j];
        return {
          w: w, h: h, v: v, levels: top + 1, dicom: true, offset: d.offset, scale: d.scale, inverted: d.inverted,
          minimum: d.minimum, maximum: d.maximum, windows: d.windows || [], voi: d.voi,
        };
      });
    });
  }

  function cdfOf(film) {  // the share of pixels at or below each value
    var hist = new Float64Array(film.levels), v = film.v, n = v.length;
    for (var i = 0; i < n; i++) hist[v[i]]++;
    for (var s = 0, j = 0; j < film.levels; j++) { s += hist[j]; hist[j] = s / n; }
    return hist;
  }
  function percentile(cdf, q) {
    for (var i = 0; i < cdf.length; i++) if (cdf[i] >= q) return i;
    return cdf.length - 1;
  }
  function unit(film, u) { return film.offset + film.scale * u; }  // a value → modality units

  /* { center, width } of the picture the server stored: the file's first window, else min..max stretched
     (the same grey levels as ml/imageio.py `_stretch`), or the grey levels as they are for an 8-bit film. */
  function defaultWindow(film) {
    if (!film.dicom) return { center: 127.5, width: 255 };
    var first = film.windows[0];
    if (film.voi === "window" && first) return { center: first.center, width: first.width };
    return { center: (film.minimum + film.maximum) / 2 + 0.5, width: film.maximum - film.minimum + 1 };
  }
  /* The window spanning the film percentiles q0..q1 (of the brightness-ordered values), in the film's units. */
  function percentileWindow(film, cdf, q0, q1) {
    var lo = percentile(cdf, q0), hi = percentile(cdf, q1);
    hi = Math.max(hi, lo + Math.max(8, Math.round(film.levels / 32)));
    var a = unit(film, lo), b = unit(film, hi);
    return { center: (a + b) / 2, width: Math.abs(b - a) };
  }
  function step(film) {  // window change per pixel of drag: 1 grey level; a 256th of a DICOM film's range
    return film.dicom ? Math.max((film.maximum - film.minimum) / 256, Math.abs(film.scale)) : 1;
  }
  function limit(film, win) {  // keeps a dragged window on the film
    if (!film.dicom) return { center: clamp(win.center, 0, 255), width: clamp(win.width, 2, 512) };
    var range = film.maximum - film.minimum + 1;
    return { center: clamp(win.center, film.minimum, film.maximum), width: clamp(win.width, 1, 2 * range) };
  }
  /* Brightening moves the level down the modality values, or up them where the film was turned round. */
  function levelSign(film) { return film.inverted ? -1 : 1; }

  /* value → RGBA (little-endian Uint32: A B G R) through the window, the film's turn and the reviewer's invert */
  function table(film, center, width, invert) {
    var out = new Uint32Array(film.levels), flip = invert !== film.inverted, g, m;
    for (var u = 0; u < film.levels; u++) {
      if (!film.dicom) {
        g = Math.round(clamp((u - (center - width / 2)) / width, 0, 1) * 255);
      } else {
        m = film.offset + film.scale * u;
        if (width <= 1) g = m <= center - 0.5 ? 0 : 255;
        else g = clamp(roundHalfEven(((m - (center - 0.5)) / (width - 1) + 0.5) * 255), 0, 255);
      }
      if (flip) g = 255 - g;
      out[u] = (255 << 24 | g << 16 | g << 8 | g) >>> 0;
    }
    return out;
  }
  function readout(film, center, width) {
    function num(x) { return film.dicom && Math.abs(film.scale) < 1 ? x.toFixed(1) : String(Math.round(x)); }
    return "W " + num(width) + " · L " + num(center);
  }

  window.cxrFilm = {
    loadImage: loadImage, pixelsOf: pixelsOf, lutOf: lutOf, eightBit: eightBit, loadValues: loadValues,
    cdfOf: cdfOf, defaultWindow: defaultWindow,
    percentileWindow: percentileWindow, step: step, limit: limit, levelSign: levelSign, table: table,
    readout: readout,
  };
})();
