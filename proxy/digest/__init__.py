"""The daily digest: yesterday's spend and what changed it, by webhook and by e-mail.

``content`` builds the digest from plain figures (pure), ``render`` turns it into text,
HTML and JSON (pure), ``mail`` makes and sends the message, ``job`` gathers the figures
from the rollups and sends the digest once a day from one replica.
"""
