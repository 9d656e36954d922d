"""Floor 4: settings, bootstrap, the `aos` CLI and the direct Python client."""
