// Playground: POST /api/llm/prompt/ with stream: true, show the Server-Sent Events as they arrive,
// then the figures of the "done" event, and let the user rate the answer (POST /api/feedback/).
(function () {
  "use strict";
  var form = document.getElementById("playground");
  if (!form) return;
  var csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  var answer = document.getElementById("pg-answer");
  var errorBox = document.getElementById("pg-error");
  var errorMore = document.getElementById("pg-error-more");
  var upstream = document.getElementById("pg-upstream");
  var figures = document.getElementById("pg-figures");
  var rate = document.getElementById("pg-rate");
  var rated = document.getElementById("pg-rated");
  var send = document.getElementById("pg-send");
  var requestId = null;

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf, Accept: "application/json" },
      body: JSON.stringify(body),
    });
  }

  function show(done) {
    document.getElementById("pg-tokens").textContent = done.prompt_tokens + " prompt + " + done.completion_tokens + " completion = " + done.total_tokens;
    // The provider reported no usage: the server estimated the counts (one token per 4 characters).
    if (done.tokens_estimated) document.getElementById("pg-tokens").textContent += " (estimated)";
    document.getElementById("pg-latency").textContent = Math.round(done.latency_ms) + " ms";
    document.getElementById("pg-ttft").textContent = done.ttft_ms == null ? "—" : Math.round(done.ttft_ms) + " ms";
    document.getElementById("pg-cost").textContent = "$" + Number(done.cost_estimate).toFixed(8);
    var link = document.getElementById("pg-request");
    link.textContent = done.request_id;
    link.href = form.dataset.logUrl + done.request_id + "/";
    figures.hidden = false;
  }

  // A failed prompt: our message (what happened, what to do), the vendor's own words, and the
  // logged call, whose page has the whole story.
  function fail(data) {
    errorBox.textContent = data.error_message || data.error || "The prompt failed.";
    if (data.fields) errorBox.textContent += " " + JSON.stringify(data.fields);
    upstream.hidden = !data.upstream_message;
    var chosen = form.model.selectedOptions[0];
    if (chosen && chosen.parentElement.dataset.vendor) {
      document.getElementById("pg-vendor").textContent = chosen.parentElement.dataset.vendor;
    }
    document.getElementById("pg-upstream-text").textContent = data.upstream_message || "";
    if (data.request_id) {
      requestId = data.request_id;
      document.getElementById("pg-error-link").href = form.dataset.logUrl + data.request_id + "/";
      errorMore.hidden = false;
    }
  }

  function handle(event, data) {
    if (event === "start") requestId = data.request_id;
    else if (event === "chunk") answer.textContent += data.text;
    else if (event === "done") { requestId = data.request_id; show(data); rate.hidden = false; }
    else if (event === "error") fail(data);
  }

  form.addEventListener("submit", async function (submit) {
    submit.preventDefault();
    answer.textContent = "";
    requestId = null;
    errorBox.textContent = "";
    errorMore.hidden = true;
    figures.hidden = true;
    rate.hidden = true;
    rated.textContent = "";
    send.disabled = true;
    var body = { prompt: form.prompt.value, model: form.model.value, stream: true };
    // The provider of the group chosen: a model name may be served by more than one.
    var option = form.model.selectedOptions[0];
    if (option && option.dataset.provider) body.provider = option.dataset.provider;
    if (form.system_prompt.value) body.system_prompt = form.system_prompt.value;
    if (form.temperature.value !== "") body.temperature = Number(form.temperature.value);
    if (form.max_tokens.value !== "") body.max_tokens = Number(form.max_tokens.value);
    try {
      var response = await post(form.dataset.promptUrl, body);
      var type = response.headers.get("Content-Type") || "";
      if (!type.startsWith("text/event-stream")) {
        var failure = await response.json().catch(function () { return {}; });
        fail(Object.assign({ error: "HTTP " + response.status }, failure));
        return;
      }
      var reader = response.body.getReader();
      var decoder = new TextDecoder();
      var buffer = "";
      for (;;) {
        var part = await reader.read();
        if (part.done) break;
        buffer += decoder.decode(part.value, { stream: true });
        var boundary;
        while ((boundary = buffer.indexOf("\n\n")) >= 0) {
          var block = buffer.slice(0, boundary);
          buffer = buffer.slice(boundary + 2);
          var event = "message", data = "";
          block.split("\n").forEach(function (line) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).trim();
          });
          if (data) handle(event, JSON.parse(data));
        }
      }
    } catch (error) {
      errorBox.textContent = "The request failed: " + error.message;
    } finally {
      send.disabled = false;
    }
  });

  rate.querySelectorAll("button[data-rating]").forEach(function (button) {
    button.addEventListener("click", async function () {
      if (!requestId) return;
      var response = await post(form.dataset.feedbackUrl, { request_id: requestId, rating: button.dataset.rating });
      // 201: a first rating; 200: this person's earlier rating of the call, replaced.
      if (response.status === 201) rated.textContent = "Thanks, saved.";
      else if (response.ok) rated.textContent = "Thanks, your rating is updated.";
      else rated.textContent = "Could not save the rating (HTTP " + response.status + ").";
    });
  });
})();
