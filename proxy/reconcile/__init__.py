"""Reconciliation with the provider's bill: its usage and cost reports beside the rollups.

``reports`` holds the value types and errors, ``openai_reports`` and ``anthropic_reports``
turn each provider's report pages into them (pure), ``fetch`` pages through the reports over
HTTP, ``compare`` puts them beside tallyproxy's totals (pure), ``local`` reads those totals
from the rollups, and ``job`` runs it all periodically and alerts.
"""
