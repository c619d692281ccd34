"""Tokenizer loading, model families and prompt formats behind ``proxy.tokens``."""
