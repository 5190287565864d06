"""Language-model inference-time scaling (installed as ``ppl.inference.llm``)."""
