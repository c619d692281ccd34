"""Storage: schema, migrations, the batch record writer and the usage queries."""
