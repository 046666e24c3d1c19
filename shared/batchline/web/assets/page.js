// batchline jobs page: while the page shows a running job, the server marks its content
// with data-live="SECONDS"; this fetches the same page's content again after that long
// (?fragment=1) and swaps it in, until no job shown is running. The server escapes every
// value it renders; nothing here builds HTML from strings.
"use strict";

(function () {
  let failures = 0;

  function content() {
    return document.getElementById("content");
  }

  function say(text) {
    const status = document.getElementById("refresh-status");
    if (status) {
      status.textContent = text;
    }
  }

  function schedule() {
    const current = content();
    if (!current || !current.dataset.live) {
      return;
    }
    const seconds = Math.max(1, Number(current.dataset.live) || 5);
    // Back off after failures (2, 4, 8 times the interval), then keep trying.
    const factor = Math.min(2 ** failures, 8);
    window.setTimeout(refresh, seconds * 1000 * factor);
  }

  async function refresh() {
    const url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    try {
      const reply = await fetch(url, {
        headers: { Accept: "text/html" },
        cache: "no-store",
        credentials: "same-origin",
      });
      if (!reply.ok) {
        throw new Error("HTTP " + reply.status);
      }
      const parsed = new DOMParser().parseFromString(await reply.text(), "text/html");
      const fresh = parsed.getElementById("content");
      if (!fresh) {
        throw new Error("no content in the answer");
      }
      content().replaceWith(document.importNode(fresh, true));
      failures = 0;
      say("updated " + new Date().toLocaleTimeString());
    } catch (error) {
      failures += 1;
      say("could not refresh (" + error.message + "); trying again");
    }
    schedule();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", schedule);
  } else {
    schedule();
  }
})();
