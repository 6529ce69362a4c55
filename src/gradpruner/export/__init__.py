"""Export to GGUF with llama.cpp's own converter and quantizer, each file checked against the
Hugging Face model (`gguf.export_gguf`); scoring a GGUF through llama.cpp (`scoring`)."""
