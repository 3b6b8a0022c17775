// goldfleet console: the CSRF token on every htmx request, select-all in the clones table,
// and an operation's live progress (server-sent events). No build step, no other library.
(function () {
  "use strict";
  document.addEventListener("htmx:configRequest", function (event) {
    var meta = document.querySelector('meta[name="csrf-token"]');
    if (meta) event.detail.headers["X-CSRF-Token"] = meta.content;
  });

  function countSelected() {
    var out = document.getElementById("selected-count");
    if (!out) return;
    var n = document.querySelectorAll('#bulk input[name="clone"]:checked').length;
    out.textContent = n ? n + " selected" : "";
  }

  document.addEventListener("change", function (event) {
    var t = event.target;
    if (t && t.id === "select-all") {
      document.querySelectorAll('#bulk input[name="clone"]').forEach(function (box) {
        box.checked = t.checked;
      });
    }
    if (t && (t.id === "select-all" || t.name === "clone")) countSelected();
  });

  // a bundle upload: the file itself as the body (not multipart), streamed by the server
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form || form.id !== "bundle-import") return;
    event.preventDefault();
    var out = document.getElementById("bundle-result");
    var file = form.querySelector('input[type="file"]').files[0];
    if (!file) { out.textContent = "choose a bundle file"; return; }
    out.textContent = "uploading " + file.name + " (" + file.size + " bytes)…";
    var meta = document.querySelector('meta[name="csrf-token"]');
    fetch(form.getAttribute("action"), {
      method: "POST",
      body: file,
      credentials: "same-origin",
      headers: {
        "X-CSRF-Token": meta ? meta.content : "",
        "Content-Type": "application/octet-stream"
      }
    }).then(function (r) { return r.text(); })
      .then(function (html) { out.innerHTML = html; })
      .catch(function (e) { out.textContent = "the upload failed: " + e; });
  });

  function follow() {
    var box = document.getElementById("progress");
    if (!box || !box.dataset.events || !window.EventSource) return;
    var source = new EventSource(box.dataset.events);
    source.addEventListener("progress", function (e) {
      box.innerHTML = e.data;
      if (window.htmx) window.htmx.process(box); // its buttons post through htmx
    });
    source.addEventListener("items", function (e) {
      var items = document.getElementById("items");
      if (items) items.innerHTML = e.data;
    });
    source.addEventListener("end", function () { source.close(); });
    window.addEventListener("pagehide", function () { source.close(); });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", follow);
  } else {
    follow();
  }
})();
