"""The provider simulator: real HTTP servers on loopback speaking each provider's
wire format, with fault injection. See ``core`` for the test numbers."""
