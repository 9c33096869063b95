"""Changes during a run: settings tried and kept while training goes on."""
