"""LLaMA: the layout of each size, the pinned conversion from Meta's weights (`convert`), the
tokenizer files, the torch 1.13 checkpoint writer (`torch_save`), and the generated base (`base`)."""
