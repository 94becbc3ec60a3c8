//! Logging set-up shared by every subcommand.
