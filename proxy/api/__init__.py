"""HTTP routes of tallyproxy other than the forwarding path."""
