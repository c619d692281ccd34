"""Test infrastructure shared by all tests: a real Postgres, a fake provider, server runners."""
