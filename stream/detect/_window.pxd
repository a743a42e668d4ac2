# Declarations shared with other compiled modules (stream/_route.pyx builds Rows when it decodes
# an internal message).

cdef class Rows:
    cdef object owner           # keeps the columns' memory alive
    cdef list metrics           # metric name of each row of the columns (shared str objects)
    cdef const double* ts
    cdef const double* value
    cdef Py_ssize_t start, n    # this view: rows start .. start + n of the columns


cdef class Summary:
    cdef double v[14]           # one metric's window summary in window.SUMMARY_FIELDS order
