"""Pure rules: formats, variants, policy, limits, names, errors, job payloads. No I/O."""
