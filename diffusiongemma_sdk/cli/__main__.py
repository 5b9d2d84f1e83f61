"""`python -m diffusiongemma_sdk.cli`: the same program as the `diffusiongemma` script."""

from diffusiongemma_sdk.cli import main

main()
