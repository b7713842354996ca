"""Sparse autoencoders (sae_lens) on a model's activations, offline: cache a hook's activations on
real tokens (`activations`), train (`training`), save and load (`loading`), analyse latents against
directions and labels (`analysis`), and the toy organism's shipped SAE (`toy`;
`python -m probes.sae --train-toy`). Nothing here prints or plots."""
