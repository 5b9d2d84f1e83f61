"""langchain-diffusiongemma: LangChain chat model for DiffusionGemma on any diffusiongemma-sdk backend (coming next)."""
