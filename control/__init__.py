"""The control plane: assets, uploads, promotion, preview jobs and signed playback."""
