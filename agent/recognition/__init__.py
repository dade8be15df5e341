"""Recognition: who a face is: matching, the gallery and its file, tracking, open-set thresholds, enrolment,
corrections and recurring strangers.
"""
