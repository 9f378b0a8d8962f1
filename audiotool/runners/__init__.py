"""Where a batch's files are processed: in this process (the default) or on a Ray cluster."""
