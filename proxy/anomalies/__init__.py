"""Anomalies: sessions, users or keys whose spend in a window stands out from their peers'.

``detect`` is the pure rule (median and MAD of the peers), ``job`` reads the windows from
the hourly rollups, stores what it finds once and sends the webhook.
"""
