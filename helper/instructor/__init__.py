"""
The instructor's tools, never in the student kit: the kit maker (release), the batch grader with its
sandbox, model scoring, notebook check, report and similarity report.
"""
