"""Pure ``nn.Module`` implementations of the published models (no I/O, padding or clamping)."""
