"""Cross-cutting helpers every stage may use: errors, secret redaction, safe text, network
helpers, the private local directory, shutdown, progress lines, telemetry and the run summary."""
