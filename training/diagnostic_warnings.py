"""What in one split's diagnostics deserves a look before the model is trusted: worded once, here, at training.

The words are stored in the manifest (Diagnostics.warnings); the `vae-train` summary, the report page and the
service's model page show them as stored, so an older bundle keeps the words it was trained with. No torch here."""

from __future__ import annotations

from contract.manifest import Diagnostics, DiagnosticWarning

# The gap IWAE_K - ELBO_K estimates KL(q(z|x) || p(z|x)) (DESIGN.md section 2): how far the encoder's posterior is
# from the true one. It is flagged past a tenth of the log-likelihood's size, where the ELBO the model was fitted to
# misjudges log p(x) by more than 10%; the 1 nat keeps a likelihood near 0 from flagging a gap of a fraction of a nat.
GAP_RELATIVE = 0.1
GAP_NATS = 1.0
# A decoder that ignored z and predicted each feature's mean would fit the rows with the data's own variance
# (ratio 1); a decoder variance ten times the data's means its noise, not its mean, accounts for the rows.
DECODER_VARIANCE_RATIO = 10.0
# Below 50 rows a latent unit's variance across rows (what makes it active) has a relative standard error
# sqrt(2 / (n - 1)) over 20%, so a unit near the activity threshold is counted either way, and the gap and the
# aggregate-posterior KL (undefined at n <= d) move as much with the rows drawn.
MIN_DIAGNOSTIC_ROWS = 50


def diagnostic_warnings(d: Diagnostics) -> list[DiagnosticWarning]:
    """The warnings of one split's diagnostics, in the order a reader should take them: few rows, inactive units,
    gap, decoder variance. Each has one rule, on the constants above (the activity threshold of a unit is
    d.active_unit_threshold, training/evaluate.py's ACTIVE_UNIT_THRESHOLD)."""
    units = len(d.kl_per_dim)
    found: list[tuple[str, str]] = []  # (kind, message)
    if d.rows < MIN_DIAGNOSTIC_ROWS:
        found.append(
            (
                "few_rows",
                f"the diagnostics rest on {d.rows} row{'' if d.rows == 1 else 's'}, fewer than {MIN_DIAGNOSTIC_ROWS}: "
                "active units, the gap and the aggregate-posterior KL are rough (more validation rows make them "
                "steadier: --val-fraction, --eval-rows)",
            )
        )
    if d.active_units < units:
        found.append(
            (
                "inactive_units",
                f"{units - d.active_units} of {units} latent units are inactive (posterior collapse on them); "
                "a smaller --latent-dim gives the same model for less",
            )
        )
    if d.gap > GAP_RELATIVE * abs(d.iwae) + GAP_NATS:
        found.append(
            (
                "gap",
                f"the variational gap IWAE - ELBO is {d.gap:.3g} nats: the encoder's posterior is far from the true "
                "one, so trust the IWAE log-likelihood over the ELBO (--covariance full or more epochs may narrow it; "
                "--objective iwae widens it)",
            )
        )
    if d.decoder_variance_mean > DECODER_VARIANCE_RATIO * d.data_variance_mean:
        found.append(
            (
                "decoder_variance",
                f"the decoder variance ({d.decoder_variance_mean:.3g}) is over {DECODER_VARIANCE_RATIO:g}x the data's "
                f"({d.data_variance_mean:.3g}): reconstructions explain little (train longer, or check the data's "
                "scale)",
            )
        )
    return [DiagnosticWarning(kind=kind, message=message) for kind, message in found]


def with_warnings(d: Diagnostics) -> Diagnostics:
    """d with its warnings filled in, as the manifest stores it."""
    return d.model_copy(update={"warnings": diagnostic_warnings(d)})
