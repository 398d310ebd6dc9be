"""What a name means: registry.yaml's entries, adapter import, checkpoint download (torch-free)."""
