"""The token service: every rule that needs the store, and the views both adapters render."""
