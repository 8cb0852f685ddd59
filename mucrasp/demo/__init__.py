"""The bundled demo: synthetic visual-reasoning scenes, the demo VLM, its tokenizer and training."""
