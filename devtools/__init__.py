"""Developer tooling: the local stack, the demo, bench drivers and load generators. Never copied into an image,
never imported by a deployable or the kernel (see .importlinter)."""
