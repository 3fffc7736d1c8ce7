// Draws the figures the server computed (json_script "chart-data"); no figure is computed here.
(function () {
  "use strict";
  var source = document.getElementById("chart-data");
  if (!source || !window.Chart) return;
  var data = JSON.parse(source.textContent);
  var colors = { blue: "#1f5fbf", red: "#b3261e", green: "#1e7a3c", orange: "#a15c00", purple: "#6b3fa0", grey: "#5f6368" };
  Chart.defaults.font.family = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
  Chart.defaults.color = "#3c4043";
  Chart.defaults.animation = false;

  function shortLabel(label) {
    // ISO periods: drop the offset and seconds for the axis.
    return typeof label === "string" && label.length > 16 && label[10] === "T" ? label.slice(5, 16).replace("T", " ") : label;
  }
  // A period the range covers only in part (the server's `partial`) is drawn hollow and dashed
  // and says "(partial)"; the tooltip gives the calls behind each period (the server's `requests`).
  function isPartial(series, index) {
    return Boolean(series && series.partial && series.partial[index]);
  }
  function axisLabels(series) {
    return series.labels.map(function (label, index) {
      return shortLabel(label) + (isPartial(series, index) ? " (partial)" : "");
    });
  }
  function countFooter(series, noun) {
    return function (items) {
      if (!items.length || !series[noun.key]) return "";
      var count = series[noun.key][items[0].dataIndex];
      return count === null || count === undefined ? "" : count.toLocaleString() + " " + (count === 1 ? noun.one : noun.many);
    };
  }
  var CALLS = { key: "requests", one: "call", many: "calls" };
  function draw(id, type, series, datasets, options, noun) {
    var canvas = document.getElementById(id);
    if (!canvas || !series) return;
    noun = noun || CALLS;
    var base = { responsive: true, interaction: { mode: "index", intersect: false } };
    if (series[noun.key]) base.plugins = { tooltip: { callbacks: { footer: countFooter(series, noun) } } };
    return new Chart(canvas, {
      type: type,
      data: { labels: axisLabels(series), datasets: datasets.map(function (dataset) { return marked(dataset, series, type); }) },
      options: Object.assign(base, options || {}),
    });
  }
  function marked(dataset, series, type) {
    if (!series.partial || series.partial.indexOf(true) === -1) return dataset;
    var color = dataset.borderColor || dataset.backgroundColor;
    if (type === "line") {
      var radius = dataset.pointRadius || 0;
      return Object.assign(dataset, {
        pointRadius: function (context) { return isPartial(series, context.dataIndex) ? 4 : radius; },
        pointBackgroundColor: function (context) { return isPartial(series, context.dataIndex) ? "#fff" : color; },
        pointBorderColor: color,
        segment: { borderDash: function (context) { return isPartial(series, context.p0DataIndex) || isPartial(series, context.p1DataIndex) ? [5, 4] : undefined; } },
      });
    }
    // Bars: a partial period's bar is outlined, not filled.
    return Object.assign(dataset, {
      backgroundColor: function (context) { return isPartial(series, context.dataIndex) ? "rgba(255,255,255,0)" : color; },
      borderColor: color,
      borderWidth: function (context) { return isPartial(series, context.dataIndex) ? 2 : 0; },
      borderDash: [4, 3],
    });
  }
  function line(label, values, color, extra) {
    return Object.assign({ label: label, data: values, borderColor: color, backgroundColor: color, pointRadius: 0, borderWidth: 2, spanGaps: false }, extra || {});
  }
  function bar(label, values, color) {
    return { label: label, data: values, backgroundColor: color };
  }

  // Overview: one set of columns over time (data.periods) for its three charts and the sparklines.
  var periods = data.periods;
  draw("chart-traffic", "line", periods, [line("Requests", periods && periods.requests, colors.blue), line("Errors", periods && periods.errors, colors.red)]);
  draw("chart-tokens", "bar", periods, [bar("Prompt", periods && periods.prompt_tokens, colors.blue), bar("Completion", periods && periods.completion_tokens, colors.orange)],
    { scales: { x: { stacked: true }, y: { stacked: true } } });
  // Gaps stay gaps: a period without enough calls has no percentile, and a line across it would invent one.
  draw("chart-latency", "line", periods, [
    line("p50", periods && periods.p50_latency_ms, colors.green),
    line("p95", periods && periods.p95_latency_ms, colors.purple),
    line("p99", periods && periods.p99_latency_ms, colors.orange),
  ]);
  draw("chart-cost", "bar", data.cost_by_model, [bar("Cost (USD)", data.cost_by_model && data.cost_by_model.cost, colors.blue)], { indexAxis: "y" });

  // Sparklines on the cards: each card names the column of data.periods it draws.
  if (data.sparks && periods) {
    document.querySelectorAll("canvas[data-spark]").forEach(function (canvas) {
      var values = periods[data.sparks[canvas.dataset.spark]] || [];
      new Chart(canvas, {
        type: "line",
        data: { labels: values.map(function (_, i) { return i; }), datasets: [line("", values, colors.grey, { borderWidth: 1.5 })] },
        options: { responsive: true, aspectRatio: 4, plugins: { legend: { display: false }, tooltip: { enabled: false } }, scales: { x: { display: false }, y: { display: false } } },
      });
    });
  }

  // Analytics
  var models = data.models;
  draw("chart-model-requests", "bar", models, [bar("Requests", models && models.requests, colors.blue)], { indexAxis: "y" });
  draw("chart-model-cost", "bar", models, [bar("Cost (USD)", models && models.cost, colors.orange)], { indexAxis: "y" });
  draw("chart-model-latency", "bar", models, [bar("p50 (ms)", models && models.p50_latency_ms, colors.green), bar("p95 (ms)", models && models.p95_latency_ms, colors.purple), bar("p99 (ms)", models && models.p99_latency_ms, colors.orange)], { indexAxis: "y" });
  draw("chart-model-errors", "bar", models, [bar("Error rate (%)", models && models.error_rate, colors.red)], { indexAxis: "y" });
  draw("chart-daily", "bar", data.daily, [bar("Requests", data.daily && data.daily.requests, colors.blue), bar("Errors", data.daily && data.daily.errors, colors.red)], { aspectRatio: 4 });

  // Feedback
  draw("chart-feedback-days", "line", data.by_day, [line("Satisfaction (%)", data.by_day && data.by_day.satisfaction_rate, colors.green, { pointRadius: 2 })], { scales: { y: { min: 0, max: 100 } } },
    { key: "ratings", one: "rating", many: "ratings" });
  draw("chart-feedback-models", "bar", data.by_model, [bar("Satisfaction (%)", data.by_model && data.by_model.satisfaction_rate, colors.green)], { indexAxis: "y", scales: { x: { min: 0, max: 100 } } });

  // Analytics: the breakdown (the figure it is ordered by, per group and "Other")
  var breakdown = data.breakdown;
  draw("chart-breakdown", "bar", breakdown, [bar(breakdown && breakdown.label, breakdown && breakdown.values, colors.blue)], { indexAxis: "y", aspectRatio: 3, plugins: { legend: { display: false } } });

  // A user's page
  var usage = data.user_usage;
  draw("chart-user-usage", "line", usage, [line("Calls", usage && usage.requests, colors.blue), line("Errors", usage && usage.errors, colors.red)]);
  draw("chart-user-cost", "bar", usage, [bar("Cost (USD)", usage && usage.cost, colors.orange)]);
})();
