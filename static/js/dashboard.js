// Filter bar: submit on change, show the custom range inputs, opt-in auto refresh.
(function () {
  "use strict";
  document.querySelectorAll("form.filters").forEach(function (form) {
    var custom = form.querySelector(".custom-range");
    // A pointer choice applies at once. A keyboard choice does not: arrow keys step through the
    // ranges and models, and reloading the page at each step would lose the focus (WCAG 3.2.2);
    // Enter (or the Apply button) applies it.
    var byKeyboard = false;
    // On the document: the form's controls may sit elsewhere on the page (form="filters").
    document.addEventListener("keydown", function (event) {
      var target = event.target;
      if (target.form !== form) return;
      byKeyboard = true;
      if (event.key === "Enter" && target.matches("input[type=radio], input[type=checkbox], select")) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    document.addEventListener("pointerdown", function () { byKeyboard = false; });
    // form.elements: also the controls elsewhere on the page that belong to it (form="filters").
    Array.prototype.filter.call(form.elements, function (input) { return input.hasAttribute("data-autosubmit"); }).forEach(function (input) {
      input.addEventListener("change", function () {
        if (input.name === "range" && custom) custom.hidden = input.value !== "custom";
        if (input.name === "range" && input.value === "custom") return; // wait for the dates and Apply
        if (!byKeyboard) form.requestSubmit();
      });
    });
    form.addEventListener("submit", function () {
      // Only send the custom dates with a custom range, and no empty fields: shorter, shareable URLs.
      var range = form.querySelector("input[name=range]:checked");
      form.querySelectorAll("input, select").forEach(function (input) {
        var customDate = input.name === "start_date" || input.name === "end_date";
        if (!input.value || (customDate && (!range || range.value !== "custom"))) input.disabled = true;
      });
    });
  });
  // A trace's calls are indented by their depth (a style attribute would be inline style, which the
  // Content-Security-Policy forbids; setting the property from a script is allowed).
  document.querySelectorAll("[data-depth]").forEach(function (item) {
    item.style.setProperty("--depth", item.dataset.depth);
  });
  var refresh = document.querySelector("meta[name=auto-refresh]");
  if (refresh) {
    setTimeout(function () { window.location.reload(); }, Number(refresh.content) * 1000);
  }
})();
