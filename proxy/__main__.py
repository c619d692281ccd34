from proxy.cli import main

# Guarded: a child process started with ``spawn`` (the OTLP export) imports this module again.
if __name__ == "__main__":
    raise SystemExit(main())
