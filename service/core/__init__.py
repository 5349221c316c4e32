"""The torch-free core that training and serving share: preprocessing, the diffusion schedule, code
distances, the Market-1501 reader, the evaluation protocol and re-ranking."""
