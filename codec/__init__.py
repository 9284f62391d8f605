"""The neural codec: encode speech into RVQ tokens and decode them back."""
