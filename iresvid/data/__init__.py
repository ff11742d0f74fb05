"""Video data: frame-exact readers, real annotation formats, clip samplers, CPU/GPU transforms."""
