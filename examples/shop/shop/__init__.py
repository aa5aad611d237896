"""An example shop: orders come in over HTTP, a worker keeps a revenue projection."""
