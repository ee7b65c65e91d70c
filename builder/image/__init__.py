"""Images: inputs and tag, the mkosi build, the store of built images."""
