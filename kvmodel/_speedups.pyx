# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twins of kvmodel's hottest loops (Cython), for ``kvmodel._accel`` to pick.

The pure-Python functions stay the reference: ``kvmodel.keys`` for the key
codec, ``kvmodel._list`` for turning engine records into entries and
``kvmodel.engines._sqlite_rows`` for checking SQLite rows. Each function here
handles the common, well-formed case in C and hands anything else (another
type, an escaped NUL, a long int, a damaged row, any error) to the reference
function it was installed with, so every result and every error message comes
from one place; tests/test_accelerator.py checks that both agree on every
input hypothesis can think of.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_FromUnsignedLongLong
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memchr, memcpy

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t* size) except NULL
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)


# Set by install(): the pure-Python functions that answer every case this
# module does not handle itself.
cdef object _encode_key_py = None
cdef object _decode_key_py = None
cdef object _checked_entry_py = None
cdef object _raw_entry = None
cdef object _entry = None
cdef object _decode_value_py = None
cdef object _unpackb = None
cdef dict _unpack_options = {}
cdef object _entry_set_key = None
cdef object _entry_set_value = None
cdef object _entry_set_stamp = None
cdef object _object_new = object.__new__
cdef object _raw_set_key = None
cdef object _raw_set_value = None
cdef object _raw_set_encoding = None
cdef object _raw_set_stamp = None
cdef Py_ssize_t _max_value_size = 0
cdef Py_ssize_t _max_read_key_size = 0
cdef Py_ssize_t _max_entry_value_size = 0
cdef object _msgpack_encoding = None  # compared as a Python int: engines' records
cdef frozenset _value_encodings = frozenset()

# Keys longer than this are encoded by the reference (none is ever written:
# the write limit is 2 KiB, which escaped NULs can at most double).
cdef enum:
    KEY_BUFFER = 4608
cdef uint64_t SIGN_BIT = 1ULL << 63
cdef uint64_t ALL_BITS = 0xFFFFFFFFFFFFFFFFULL
cdef uint64_t NAN_POS = 0x7FF8000000000000ULL
cdef uint64_t NAN_NEG = 0xFFF8000000000000ULL


def install_key_codec(*, encode_key, decode_key):
    """Gives the key codec its reference functions (kvmodel.keys calls it)."""
    global _encode_key_py, _decode_key_py
    _encode_key_py = encode_key
    _decode_key_py = decode_key


def install_row_checks(*, checked_entry, raw_entry, value_encodings, max_value_size,
                       max_read_key_size):
    """Gives checked_entries its reference and limits (kvmodel.engines._sqlite_rows calls it)."""
    global _checked_entry_py, _raw_entry, _value_encodings, _max_value_size, _max_read_key_size
    global _raw_set_key, _raw_set_value, _raw_set_encoding, _raw_set_stamp
    _checked_entry_py = checked_entry
    _raw_entry = raw_entry
    _raw_set_key = raw_entry.__dict__["key"].__set__
    _raw_set_value = raw_entry.__dict__["value"].__set__
    _raw_set_encoding = raw_entry.__dict__["encoding"].__set__
    _raw_set_stamp = raw_entry.__dict__["versionstamp"].__set__
    _value_encodings = frozenset(value_encodings)
    _max_value_size = max_value_size
    _max_read_key_size = max_read_key_size


def install_entries(
    *, entry, decode_value, unpackb, unpack_options, msgpack_encoding, max_value_size
):
    """Gives decode_entries its reference, msgpack's decoder and options (kvmodel._list)."""
    global _entry, _decode_value_py, _unpackb, _unpack_options, _msgpack_encoding
    global _max_entry_value_size, _entry_set_key, _entry_set_value, _entry_set_stamp
    _entry = entry
    _decode_value_py = decode_value
    _unpackb = unpackb
    _unpack_options = dict(unpack_options)
    _msgpack_encoding = msgpack_encoding
    _max_entry_value_size = max_value_size
    # Entry is a frozen slotted attrs class: its slots' descriptors fill a new
    # instance without the generated __init__'s per-field object.__setattr__.
    _entry_set_key = entry.__dict__["key"].__set__
    _entry_set_value = entry.__dict__["value"].__set__
    _entry_set_stamp = entry.__dict__["versionstamp"].__set__


cdef inline object _new_entry(object key, object value, object stamp):
    cdef object e = _object_new(_entry)
    _entry_set_key(e, key)
    _entry_set_value(e, value)
    _entry_set_stamp(e, stamp)
    return e


# -- keys: encoding ------------------------------------------------------------


cdef inline Py_ssize_t _put_escaped(
    unsigned char* out, Py_ssize_t n, unsigned char tag, const char* data, Py_ssize_t size
) noexcept:
    """Writes tag, data with each NUL as 00 FF, and 00; -1 when it would not fit."""
    cdef Py_ssize_t i
    cdef unsigned char c
    if n + 2 * size + 2 > KEY_BUFFER:
        return -1
    out[n] = tag
    n += 1
    if memchr(data, 0, size) == NULL:
        memcpy(out + n, data, size)
        n += size
    else:
        for i in range(size):
            c = <unsigned char>data[i]
            out[n] = c
            n += 1
            if c == 0:
                out[n] = 0xFF
                n += 1
    out[n] = 0
    return n + 1


cdef inline Py_ssize_t _put_uint(unsigned char* out, Py_ssize_t n, uint64_t v, int size) noexcept:
    cdef int i
    for i in range(size - 1, -1, -1):
        out[n + i] = <unsigned char>(v & 0xFF)
        v >>= 8
    return n + size


cdef inline int _byte_size(uint64_t v) noexcept:
    cdef int size = 0
    while v:
        size += 1
        v >>= 8
    return size


def encode_key(key):
    """:func:`kvmodel.keys.encode_key`, compiled; see there."""
    cdef unsigned char out[KEY_BUFFER]
    cdef Py_ssize_t n = 0, i, count, size
    cdef const char* data
    cdef object part
    cdef int64_t v
    cdef uint64_t mag, bits
    cdef int nbytes
    cdef double x
    if type(key) is not tuple:
        return _encode_key_py(key)
    count = PyTuple_GET_SIZE(key)
    for i in range(count):
        if n + 10 > KEY_BUFFER:
            return _encode_key_py(key)
        part = <object>PyTuple_GET_ITEM(key, i)
        t = type(part)
        if t is str:
            try:
                data = PyUnicode_AsUTF8AndSize(part, &size)
            except UnicodeEncodeError:
                return _encode_key_py(key)  # a lone surrogate: the reference names it
            n = _put_escaped(out, n, 0x02, data, size)
        elif t is int:
            try:
                v = part
            except OverflowError:
                return _encode_key_py(key)  # beyond 63 bits: the reference's long forms
            if v == 0:
                out[n] = 0x14
                n += 1
            elif v > 0:
                mag = <uint64_t>v
                nbytes = _byte_size(mag)
                out[n] = 0x14 + nbytes
                n = _put_uint(out, n + 1, mag, nbytes)
            else:
                mag = <uint64_t>(-(v + 1)) + 1
                nbytes = _byte_size(mag)
                out[n] = 0x14 - nbytes
                if nbytes == 8:
                    bits = ALL_BITS ^ mag
                else:
                    bits = ((1ULL << (8 * nbytes)) - 1) ^ mag
                n = _put_uint(out, n + 1, bits, nbytes)
        elif t is bytes:
            n = _put_escaped(out, n, 0x01, PyBytes_AS_STRING(part), PyBytes_GET_SIZE(part))
        elif t is float:
            x = part
            memcpy(&bits, &x, 8)
            if x != x:
                bits = NAN_NEG if bits & SIGN_BIT else NAN_POS
            if bits & SIGN_BIT:
                bits ^= ALL_BITS
            else:
                bits ^= SIGN_BIT
            out[n] = 0x21
            n = _put_uint(out, n + 1, bits, 8)
        elif part is True:
            out[n] = 0x27
            n += 1
        elif part is False:
            out[n] = 0x26
            n += 1
        else:
            return _encode_key_py(key)  # subclasses, bytes-likes, errors
        if n < 0:
            return _encode_key_py(key)
    return PyBytes_FromStringAndSize(<char*>out, n)


# -- keys: decoding ------------------------------------------------------------


cdef inline uint64_t _get_uint(const unsigned char* p, int size) noexcept:
    cdef uint64_t v = 0
    cdef int i
    for i in range(size):
        v = (v << 8) | p[i]
    return v


cdef object _decode(bytes data):
    """The parts of a canonical key, or None for anything the reference must judge."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t pos = 0, end
    cdef const unsigned char* nul
    cdef unsigned char tag
    cdef int m
    cdef uint64_t v, bits
    cdef double x
    cdef list parts = []
    while pos < size:
        tag = p[pos]
        pos += 1
        if tag == 0x02 or tag == 0x01:
            nul = <const unsigned char*>memchr(p + pos, 0, size - pos)
            if nul == NULL:
                return None
            end = nul - p
            if end + 1 < size and p[end + 1] == 0xFF:
                return None  # an escaped NUL inside: rare, left to the reference
            if tag == 0x02:
                try:
                    parts.append(PyUnicode_DecodeUTF8(<const char*>(p + pos), end - pos, NULL))
                except UnicodeDecodeError:
                    return None
            else:
                parts.append(PyBytes_FromStringAndSize(<const char*>(p + pos), end - pos))
            pos = end + 1
        elif 0x14 < tag <= 0x1C:
            m = tag - 0x14
            if pos + m > size or p[pos] == 0:
                return None
            parts.append(PyLong_FromUnsignedLongLong(_get_uint(p + pos, m)))
            pos += m
        elif tag == 0x14:
            parts.append(0)
        elif 0x0C <= tag < 0x14:
            m = 0x14 - tag
            if pos + m > size or p[pos] == 0xFF:
                return None
            v = _get_uint(p + pos, m)
            if m == 8:
                parts.append(-PyLong_FromUnsignedLongLong(ALL_BITS ^ v))
            else:
                parts.append(-<int64_t>(((1ULL << (8 * m)) - 1) ^ v))
            pos += m
        elif tag == 0x21:
            if pos + 8 > size:
                return None
            bits = _get_uint(p + pos, 8)
            if bits & SIGN_BIT:
                bits ^= SIGN_BIT
            else:
                bits ^= ALL_BITS
            memcpy(&x, &bits, 8)
            if x != x and bits != NAN_POS and bits != NAN_NEG:
                return None
            parts.append(x)
            pos += 8
        elif tag == 0x27:
            parts.append(True)
        elif tag == 0x26:
            parts.append(False)
        else:
            return None  # long ints, unknown tags
    return tuple(parts)


def decode_key(data):
    """:func:`kvmodel.keys.decode_key`, compiled; see there."""
    if type(data) is bytes:
        parts = _decode(data)
        if parts is not None:
            return parts
    return _decode_key_py(data)


# -- records -------------------------------------------------------------------


cdef object _checked(object key, object value, object encoding, object version, object expiry):
    """The RawEntry of a ``kv`` row whose columns have the types kvmodel writes, or None
    (the caller then asks the reference, which raises its DecodeError)."""
    cdef uint64_t counter
    cdef unsigned char stamp[10]
    if not (
        type(value) is bytes
        and PyBytes_GET_SIZE(value) <= _max_value_size
        and type(encoding) is int
        and encoding in _value_encodings
        and type(version) is int
        and version >= 0
        and version <= 0xFFFFFFFFFFFFFFFF
        and (expiry is None or type(expiry) is int)
        and type(key) is bytes
        and PyBytes_GET_SIZE(key) <= _max_read_key_size
    ):
        return None
    counter = version
    _put_uint(stamp, 0, counter, 8)
    stamp[8] = 0
    stamp[9] = 0
    e = _object_new(_raw_entry)  # a frozen slotted attrs class: see _new_entry
    _raw_set_key(e, key)
    _raw_set_value(e, value)
    _raw_set_encoding(e, encoding)
    _raw_set_stamp(e, PyBytes_FromStringAndSize(<char*>stamp, 10))
    return e


def checked_entries(list rows):
    """``[checked_entry(*row) for row in rows]`` for SQLite's (key, value, encoding,
    version, expiry) rows: :func:`kvmodel.engines._sqlite_rows.checked_entry`."""
    cdef list out = []
    cdef tuple row
    for row in rows:
        e = _checked(
            <object>PyTuple_GET_ITEM(row, 0),
            <object>PyTuple_GET_ITEM(row, 1),
            <object>PyTuple_GET_ITEM(row, 2),
            <object>PyTuple_GET_ITEM(row, 3),
            <object>PyTuple_GET_ITEM(row, 4),
        )
        out.append(_checked_entry_py(*row) if e is None else e)  # the reference raises
    return out


def decode_entries(list raw):
    """Entries of a batch of engine records: :func:`kvmodel._list.decode_entries`."""
    cdef list out = []
    cdef object key, value, data
    for r in raw:
        key = r.key
        parts = _decode(key) if type(key) is bytes else None
        if parts is None:
            parts = _decode_key_py(key)
        data = r.value
        if (
            r.encoding == _msgpack_encoding
            and type(data) is bytes
            and PyBytes_GET_SIZE(data) <= _max_entry_value_size
        ):
            try:
                value = _unpackb(data, **_unpack_options)
            except Exception:
                # Maps with tuple keys decode on the reference's slow path;
                # anything else raises there, naming the key.
                value = _decode_value_py(data, r.encoding, key)
        else:
            value = _decode_value_py(data, r.encoding, key)
        out.append(_new_entry(parts, value, r.versionstamp.hex()))
    return out


# -- the object mapper ---------------------------------------------------------


cdef extern from "Python.h":
    int PyObject_GenericSetAttr(object o, object name, object value) except -1

cdef object _version_field = None
cdef object _state_attr = None
cdef object _tracked = None


def install_documents(*, version_field, state_attr, tracked):
    """Gives the loaders the document format's names and the session's record class
    (kvmodel.orm.session calls it)."""
    global _version_field, _state_attr, _tracked
    _version_field = version_field
    _state_attr = state_attr
    _tracked = tracked


cdef object _structure_plain(object cls, tuple fields, dict form, bint every_field):
    """The object of a document whose values all have their declared types exactly (the
    reference: kvmodel.orm.model._plain_structure), or None; with ``every_field``, None
    too when a field is missing (the session then needs the reference's baseline)."""
    cdef dict kwargs = {}
    cdef tuple field
    cdef object value
    for field in fields:
        name = <object>PyTuple_GET_ITEM(field, 0)
        if name in form:
            value = form[name]
            if type(value) not in <tuple>PyTuple_GET_ITEM(field, 1):
                return None
            kwargs[name] = value
        elif every_field:
            return None
    try:
        return cls(**kwargs)
    except Exception:
        return None  # a missing field, a validator: the reference raises its DecodeError


cdef inline bint _is_current(dict form, object version):
    """ModelInfo.current_doc returns the document itself (no upgrade to run)."""
    stored = form.get(_version_field, 1)
    return stored == version or (type(stored) is int and stored > version)


cdef object _read_form(object raw, object rk):
    data = raw.value
    if (
        raw.encoding == _msgpack_encoding
        and type(data) is bytes
        and PyBytes_GET_SIZE(data) <= _max_entry_value_size
    ):
        try:
            return _unpackb(data, **_unpack_options)
        except Exception:
            pass  # the reference decodes what it can, and names the key otherwise
    return _decode_value_py(data, raw.encoding, rk)


def load_detached(info, docs, list out):
    """``load_documents(info, docs, out, None)``, compiled: the objects of a listing on a
    Kv, detached (:func:`kvmodel.orm.session.load_documents_py` is the reference)."""
    cdef object prefix = info.prefix
    cdef object decode_doc_key = info.decode_doc_key
    cdef object load = info.load
    cdef object fields = info.plain_fields
    cdef object cls = info.cls
    cdef object version = info.version
    cdef object rk, key, form, obj
    for raw in docs:
        if raw is None:
            continue
        rk = raw.key
        key = _decode(rk) if type(rk) is bytes else None
        if key is None:
            key = decode_doc_key(rk)
        if key[0] != prefix:
            continue
        form = _read_form(raw, rk)
        obj = None
        if fields is not None and type(form) is dict and _is_current(<dict>form, version):
            obj = _structure_plain(cls, <tuple>fields, <dict>form, False)
        if obj is None:
            obj = load(form, key)[0]  # every other case, and every error, as the reference
        PyObject_GenericSetAttr(obj, _state_attr, (key, form, raw.versionstamp.hex()))
        out.append(obj)


def load_tracked(info, docs, list out, session):
    """``load_documents(info, docs, out, session)``, compiled: the objects of a listing
    through the session's identity map, as ``Session._load`` makes them."""
    cdef object prefix = info.prefix
    cdef object decode_doc_key = info.decode_doc_key
    cdef object load = info.load
    cdef object fields = info.plain_fields if not info.eager_baseline else None
    cdef object cls = info.cls
    cdef object version = info.version
    cdef dict identity = session._identity
    cdef object track = session._track
    cdef object rk, key, form, obj, t, source, baseline
    for raw in docs:
        if raw is None:
            continue
        rk = raw.key
        key = _decode(rk) if type(rk) is bytes else None
        if key is None:
            key = decode_doc_key(rk)
        if key[0] != prefix:
            continue
        form = _read_form(raw, rk)
        t = identity.get(key)
        if t is not None:  # a tracked object wins over the fresh read
            if not t.deleted:
                out.append(t.obj)
            continue
        obj = None
        if fields is not None and type(form) is dict and _is_current(<dict>form, version):
            # Every field present: ModelInfo.load derives no baseline (None).
            obj = _structure_plain(cls, <tuple>fields, <dict>form, True)
        if obj is not None:
            source = form
            baseline = None
        else:
            obj, source, baseline = load(form, key)
        track(_tracked(obj, info, key[1:], form, raw.versionstamp.hex(), source, baseline, key))
        out.append(obj)


# -- point reads ---------------------------------------------------------------


def checked_point(key, tuple row):
    """``checked_entry(key, *row)`` for SQLite's (value, encoding, version, expiry) row of
    a point read: :func:`kvmodel.engines._sqlite_rows.checked_point`."""
    e = _checked(
        key,
        <object>PyTuple_GET_ITEM(row, 0),
        <object>PyTuple_GET_ITEM(row, 1),
        <object>PyTuple_GET_ITEM(row, 2),
        <object>PyTuple_GET_ITEM(row, 3),
    )
    return _checked_entry_py(key, *row) if e is None else e  # the reference raises


def checked_linked(list rows, now_ms):
    """The (entry, linked document) pairs of SQLite's joined read of index entries:
    :func:`kvmodel.engines._sqlite_rows.checked_linked`."""
    cdef list out = []
    cdef tuple row
    for row in rows:
        key = <object>PyTuple_GET_ITEM(row, 0)
        value = <object>PyTuple_GET_ITEM(row, 1)
        entry = _checked(
            key,
            value,
            <object>PyTuple_GET_ITEM(row, 2),
            <object>PyTuple_GET_ITEM(row, 3),
            <object>PyTuple_GET_ITEM(row, 4),
        )
        if entry is None:
            entry = _checked_entry_py(*row[:5])  # the reference raises
        target = None
        if <object>PyTuple_GET_ITEM(row, 9):
            expiry = <object>PyTuple_GET_ITEM(row, 8)
            target = _checked(
                value,
                <object>PyTuple_GET_ITEM(row, 5),
                <object>PyTuple_GET_ITEM(row, 6),
                <object>PyTuple_GET_ITEM(row, 7),
                expiry,
            )
            if target is None:
                target = _checked_entry_py(value, *row[5:9])  # the reference raises
            if expiry is not None and expiry <= now_ms:
                target = None
        out.append((entry, target))
    return out


def new_entry(key, value, versionstamp):
    """``Entry(key, value, versionstamp)``, without the attrs ``__init__``'s setattr calls."""
    return _new_entry(key, value, versionstamp)


def key_tuple(key):
    """:func:`kvmodel._kv.key_tuple`, compiled: the key as a read gives it back."""
    cdef Py_ssize_t i, count
    if type(key) is tuple:
        count = PyTuple_GET_SIZE(key)
        for i in range(count):
            t = type(<object>PyTuple_GET_ITEM(key, i))
            if not (t is str or t is int or t is bytes or t is float or t is bool):
                return _key_tuple_py(key)
        return key
    return _key_tuple_py(key)


cdef object _key_tuple_py = None


def install_key_tuple(*, key_tuple):
    """Gives key_tuple its reference (kvmodel._kv calls it)."""
    global _key_tuple_py
    _key_tuple_py = key_tuple
