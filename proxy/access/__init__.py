"""Access control: virtual keys that apps use instead of a provider key."""
