"""Reading tensors without loading them: the one dtype table (`dtypes`), the safetensors header
reader, the allow-listed torch zip reader, and the tensor store with its one folder indexer (`store`)."""
