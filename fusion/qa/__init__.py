"""Scene question answering: a 3D-VisTA-style text + object encoder on the detector's shared trunk."""
