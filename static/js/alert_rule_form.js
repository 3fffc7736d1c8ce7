// The rule form's preview: asks POST /api/alerts/rules/preview/ with the form's fields (the server
// replays the rule as check_alerts would have run it) and draws the series, the thresholds and the
// firing spans. Redrawn as the rule is edited, a moment after the last keystroke.
(function () {
  "use strict";
  var form = document.getElementById("rule-form");
  var canvas = document.getElementById("preview-chart");
  var summary = document.getElementById("preview-summary");
  if (!form || !canvas || !summary || !window.Chart) return;
  Chart.defaults.animation = false;
  var NUMBERS = ["threshold", "warning_threshold", "time_window_minutes", "min_ratings", "cooldown_minutes"];
  var TEXTS = ["metric_type", "model_name", "error_type", "group_by", "no_data"];
  var chart = null;
  var timer = null;
  var asked = 0;

  function value(name) {
    var field = form.elements[name];
    return field ? field.value.trim() : "";
  }
  function body() {
    var data = {
      days: Number(document.getElementById("preview-days").value),
      step_minutes: Number(document.getElementById("preview-step").value),
    };
    if (form.dataset.ruleId) data.rule_id = Number(form.dataset.ruleId);
    TEXTS.forEach(function (name) { data[name] = value(name); });
    NUMBERS.forEach(function (name) {
      var text = value(name);
      // A blank optional number is "none"; anything else goes as typed, for the server to judge.
      if (text === "") { if (name === "warning_threshold") data[name] = null; }
      else data[name] = isNaN(Number(text)) ? text : Number(text);
    });
    return data;
  }
  function label(time) {
    return time.slice(5, 16).replace("T", " ");
  }
  // Per point: is the rule (any group of it) firing? From the replay's fire and resolve events.
  function firingAt(answer) {
    var firing = {};
    var events = answer.events.slice();
    var index = 0;
    return answer.series.map(function (point) {
      while (index < events.length && events[index].time <= point.time) {
        var event = events[index++];
        var key = event.group === null ? "" : event.group;
        if (event.kind === "fire") firing[key] = true; else delete firing[key];
      }
      return Object.keys(firing).length > 0;
    });
  }
  function draw(answer) {
    var values = answer.series.map(function (point) { return point.value; });
    var top = Math.max.apply(null, values.concat([answer.threshold, answer.warning_threshold || 0]).filter(
      function (v) { return v !== null && isFinite(v); })) * 1.1 || 1;
    var firing = firingAt(answer);
    var flat = function (level) { return values.map(function () { return level; }); };
    var datasets = [
      { label: answer.group_by ? "worst " + answer.group_by : "value", data: values, borderColor: "#1f5fbf",
        borderWidth: 1.5, pointRadius: 0, spanGaps: false },
      { label: "critical", data: flat(answer.threshold), borderColor: "#b3261e", borderDash: [6, 4],
        borderWidth: 1, pointRadius: 0 },
      { label: "firing", data: firing.map(function (on) { return on ? top : null; }), fill: "origin",
        backgroundColor: "rgba(179, 38, 30, 0.15)", borderWidth: 0, pointRadius: 0, stepped: true },
    ];
    if (answer.warning_threshold !== null) {
      datasets.splice(2, 0, { label: "warning", data: flat(answer.warning_threshold), borderColor: "#a15c00",
        borderDash: [3, 3], borderWidth: 1, pointRadius: 0 });
    }
    var labels = answer.series.map(function (point) { return label(point.time); });
    if (chart) chart.destroy();
    chart = new Chart(canvas, {
      type: "line",
      data: { labels: labels, datasets: datasets },
      options: { responsive: true, interaction: { mode: "index", intersect: false },
        scales: { x: { ticks: { maxTicksLimit: 10 } }, y: { beginAtZero: true, suggestedMax: top } } },
    });
    var fires = answer.events.filter(function (e) { return e.kind === "fire"; }).length;
    canvas.dataset.fires = String(fires);
    canvas.dataset.firingPoints = String(firing.filter(Boolean).length);
    summary.textContent = "Over the last " + answer.days + " day(s), checked every " + answer.step_minutes +
      " min: " + fires + " fire(s), " + (answer.events.length - fires) + " resolve(s), " + answer.notifications +
      " notification(s); over a threshold at " + answer.breaches + " of " + answer.evaluations + " checks." +
      (answer.groups_left_out ? " Up to " + answer.groups_left_out + " group(s) left out by the cap at once." : "");
    summary.className = "";
  }
  function refused(answer) {
    var fields = answer.fields || {};
    var parts = Object.keys(fields).map(function (name) { return name + ": " + [].concat(fields[name]).join(" "); });
    summary.textContent = "No preview: " + (parts.join("; ") || answer.error || "the server refused the rule.");
    summary.className = "error";
  }
  function ask() {
    var mine = ++asked;
    summary.textContent = "Replaying…";
    fetch(form.dataset.previewUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": form.elements.csrfmiddlewaretoken.value },
      body: JSON.stringify(body()),
    }).then(function (response) {
      return response.json().then(function (answer) { return { ok: response.ok, answer: answer }; });
    }).then(function (result) {
      if (mine !== asked) return; // a newer edit asked again meanwhile
      if (result.ok) draw(result.answer); else refused(result.answer);
    }).catch(function () {
      if (mine === asked) { summary.textContent = "No preview: the server did not answer."; summary.className = "error"; }
    });
  }
  function soon() {
    clearTimeout(timer);
    timer = setTimeout(ask, 350);
  }
  form.addEventListener("input", soon);
  form.addEventListener("change", soon);
  document.getElementById("preview-days").addEventListener("change", soon);
  document.getElementById("preview-step").addEventListener("change", soon);
  ask();
})();
