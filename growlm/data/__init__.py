"""Pretraining data: stream SlimPajama-format text (or pre-tokenized shards), filter set names, tokenize, pack into
resumable blocks."""

from growlm.data.config import DataConfig
from growlm.data.manifest import data_manifest
from growlm.data.packing import pack_documents
from growlm.data.shards import ShardStream, build_train_stream, global_data_state, tokenize_split
from growlm.data.stream import PackedStream, StreamPosition, validation_blocks
from growlm.data.tokenizer import encode_documents, load_tokenizer, tokenizer_sha256
from growlm.data.virtual import VirtualStreams

__all__ = [
    "DataConfig",
    "PackedStream",
    "ShardStream",
    "StreamPosition",
    "VirtualStreams",
    "build_train_stream",
    "data_manifest",
    "encode_documents",
    "global_data_state",
    "load_tokenizer",
    "pack_documents",
    "tokenize_split",
    "tokenizer_sha256",
    "validation_blocks",
]
