"""`aspects serve`: a DICOM node. A Storage SCP spools every image to disk before it
acknowledges it (spool.py), a study quiet for N seconds becomes a job, workers score
jobs and send the results on (server.py, send.py; over TLS: tls.py). Everything that
survives a crash lives in the spool folder; nothing is kept only in memory, so
`aspects status` (status.py) reads what the node is doing from the spool alone."""
