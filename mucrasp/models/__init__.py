"""Real pretrained models that install from the package registries (no hub access at run time)."""
