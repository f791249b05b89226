# nbgrader's configuration for the book's assignments (this folder is an nbgrader course).
# `python assignments/classroom.py` (make assignments / check / grade) reads it too.
c = get_config()  # noqa: F821 - provided by nbgrader when it loads this file

c.CourseDirectory.course_id = "vae-book"
# Student versions: solutions become this stub; hidden tests are removed.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
# A cell may run this long (seconds); classroom.py limits each whole notebook instead.
c.Execute.timeout = 300
