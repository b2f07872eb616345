"""Payload formats: where a payload folder is (`payload_folder`), the legacy file-level format
(`oasst`, with its gzip streams in `gzip_stream`), the native tensor-level format (`native`,
`native_manifest`, `raw_storage`), and the plausibility check of decoded files (`plausible`)."""
