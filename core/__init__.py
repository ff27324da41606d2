"""What the API (``app``) and the workers (``worker``) both stand on: settings, photo decoding, which model
serves, job records and their folders, the queue, recovery and retention. Neither of them imports the
other."""
