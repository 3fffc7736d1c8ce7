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
  function draw(id, type, series, datasets, options) {
    var canvas = document.getElementById(id);
    if (!canvas || !series) return;
    return new Chart(canvas, {
      type: type,
      data: { labels: series.labels.map(shortLabel), datasets: datasets },
      options: Object.assign({ responsive: true, interaction: { mode: "index", intersect: false } }, options || {}),
    });
  }
  function line(label, values, color, extra) {
    return Object.assign({ label: label, data: values, borderColor: color, backgroundColor: color, pointRadius: 0, borderWidth: 2, spanGaps: true }, extra || {});
  }
  function bar(label, values, color) {
    return { label: label, data: values, backgroundColor: color };
  }

  // Overview
  draw("chart-traffic", "line", data.traffic, [line("Requests", data.traffic && data.traffic.requests, colors.blue), line("Errors", data.traffic && data.traffic.errors, colors.red)]);
  draw("chart-tokens", "bar", data.tokens, [bar("Prompt", data.tokens && data.tokens.prompt_tokens, colors.blue), bar("Completion", data.tokens && data.tokens.completion_tokens, colors.orange)],
    { scales: { x: { stacked: true }, y: { stacked: true } } });
  draw("chart-latency", "line", data.latency, [line("p50", data.latency && data.latency.p50_latency_ms, colors.green), line("p95", data.latency && data.latency.p95_latency_ms, colors.purple)]);
  draw("chart-cost", "bar", data.cost_by_model, [bar("Cost (USD)", data.cost_by_model && data.cost_by_model.cost, colors.blue)], { indexAxis: "y" });

  // Sparklines on the cards
  if (data.sparks) {
    document.querySelectorAll("canvas[data-spark]").forEach(function (canvas) {
      var values = data.sparks[canvas.dataset.spark] || [];
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
  draw("chart-model-latency", "bar", models, [bar("p50 (ms)", models && models.p50_latency_ms, colors.green), bar("p95 (ms)", models && models.p95_latency_ms, colors.purple)], { indexAxis: "y" });
  draw("chart-model-errors", "bar", models, [bar("Error rate (%)", models && models.error_rate, colors.red)], { indexAxis: "y" });
  draw("chart-daily", "bar", data.daily, [bar("Requests", data.daily && data.daily.requests, colors.blue), bar("Errors", data.daily && data.daily.errors, colors.red)], { aspectRatio: 4 });

  // Feedback
  draw("chart-feedback-days", "line", data.by_day, [line("Satisfaction (%)", data.by_day && data.by_day.satisfaction_rate, colors.green, { pointRadius: 2 })], { scales: { y: { min: 0, max: 100 } } });
  draw("chart-feedback-models", "bar", data.by_model, [bar("Satisfaction (%)", data.by_model && data.by_model.satisfaction_rate, colors.green)], { indexAxis: "y", scales: { x: { min: 0, max: 100 } } });
})();
