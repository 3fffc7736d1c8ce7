// Filter bar: submit on change, show the custom range inputs, opt-in auto refresh.
(function () {
  "use strict";
  document.querySelectorAll("form.filters").forEach(function (form) {
    var custom = form.querySelector(".custom-range");
    form.querySelectorAll("[data-autosubmit]").forEach(function (input) {
      input.addEventListener("change", function () {
        if (input.name === "range" && input.value === "custom") {
          if (custom) custom.hidden = false;
          return; // wait for the dates and Apply
        }
        if (input.name === "range" && custom) custom.hidden = true;
        form.requestSubmit();
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
  var refresh = document.querySelector("meta[name=auto-refresh]");
  if (refresh) {
    setTimeout(function () { window.location.reload(); }, Number(refresh.content) * 1000);
  }
})();
