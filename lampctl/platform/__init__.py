"""The process and the machine: files beside the database, the one-service lock, signals, the system clock,
and the bounded HTTP server the pages are served on."""
