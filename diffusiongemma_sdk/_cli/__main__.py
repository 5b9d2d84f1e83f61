"""`python -m diffusiongemma_sdk._cli`: the same program as the `diffusiongemma` script."""

from diffusiongemma_sdk._cli import main

main()
