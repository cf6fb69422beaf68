"""The Faust application and its agents: thin loops over the pure core and the sinks."""
