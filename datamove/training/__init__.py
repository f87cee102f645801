"""Training: one train step shared by online and offline training, records, the online trainer."""
