// /: the models serving, each linked to its page, and the bundles the service refused.
"use strict";

(async () => {
  const status = document.getElementById("status");
  try {
    const listing = await api("/v1/models");
    const body = document.querySelector("#models tbody");
    for (const m of listing.models) {
      const link = el("a", m.name + (m.name === listing.default_model ? " (default)" : ""));
      link.href = "/models/" + encodeURIComponent(m.name);
      row(body, [link, m.version, m.input_dim, m.latent_dim, m.covariance, fmt(m.threshold), m.provider], [1, 2, 3, 5]);
    }
    document.getElementById("models").hidden = listing.models.length === 0;
    status.textContent = listing.models.length ? "" : "No model is serving yet.";
    for (const [what, why] of Object.entries(listing.refused)) {
      document.getElementById("refused").append(el("div", `refused ${what}: ${why}`, "warn"));
    }
  } catch (err) {
    showError(status, err);
  }
})();
