"""What every service of the pipeline shares: the contract, settings, logging, lifecycle."""
