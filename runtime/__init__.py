"""aspects-rt lean inference runtime: NCCT head series in, ASPECTS report out.

Never imports torch. Data flows one way:
read -> align -> resample/strip -> segment -> batch -> classify -> score -> report.
"""

__version__ = "0.1.0"
