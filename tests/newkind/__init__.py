"""A throwaway sixth provider kind, "acme", kept in the test tree: the proof that a new
kind takes one adapter module, one simulator module and one registry line
(docs/ADDING_A_PROVIDER.md walks through it)."""
