# Declarations shared with other compiled modules (stream/detect/_hst.pyx reads an entity's
# standardized vector straight from its Baseline: HSTCore.score_base / learn_base).

cdef inline double x_of(double z, double inv_scale) noexcept nogil:
    # a z squashed into [0, 1] for the trees: clip(0.5 + z * inv_scale, 0, 1) (a feature without
    # a baseline has z 0, so x 0.5)
    cdef double t = 0.5 + z * inv_scale
    return 0.0 if t < 0.0 else (1.0 if t > 1.0 else t)


cdef class Layout:
    cdef readonly list keys      # position -> key
    cdef readonly dict index     # key -> position
    cdef dict mpos               # metric -> tuple of positions (in mfeats order)
    cdef readonly tuple mfeats   # the feature names mpos is for (None: not yet, mpos empty)
    cdef readonly bint shared    # canonical: keys, index, mfeats frozen (see above)
    # a model's columns on this layout (HSTCore.score_base): for the feature-name tuple cnames,
    # the position of each name (int32, -1: not in the layout), built when keys had cn entries
    cdef tuple cnames
    cdef bytes cmap
    cdef Py_ssize_t cn
    cdef object __weakref__

    cdef Layout copy(self, bint with_mpos)
    cdef const int* columns(self, tuple names) except NULL


cdef class Baseline:
    cdef Layout lay              # keys / positions (shared; copied before a change)
    cdef double* mean
    cdef double* var
    cdef unsigned char* present  # 0: not in the baseline; else windows learned (capped at 255)
    cdef int* order              # positions in the baseline, in the order they entered it
    cdef Py_ssize_t cap, norder
    # the last window's vector (obs order): positions, values, z
    cdef int* opos
    cdef double* oval
    cdef double* oz
    cdef Py_ssize_t on, ocap, zn

    cdef int _resize(self, Py_ssize_t cap) except -1
    cdef int _grow(self, Py_ssize_t need) except -1
    cdef int _ogrow(self, Py_ssize_t need) except -1
    cdef Py_ssize_t _pos(self, object key) except -1
    cdef tuple _mpos(self, object metric, tuple keys)
    cdef int _settle(self) except -1
    cdef dict _in_order(self, double* values)
