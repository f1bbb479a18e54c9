"""One module per `dualanodiff` subcommand; each defines ``register(subparsers)``."""
