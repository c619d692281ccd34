"""One module per ``tallyproxy`` subcommand: ``register(subparsers)`` adds its parser and sets
``run(settings, args) -> exit code`` as the parser's default."""
