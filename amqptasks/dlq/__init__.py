"""Dead letters: failure records written by workers, and reading, replaying and purging dead-letter queues."""
