/* Canonical raw-run scanner: parses record lines that have the canonical layout
 * (`lens_core.collect.rawruns.encode_record`: compact JSON, the contract's keys in the contract's
 * order, every key present) into column buffers, in one pass, validating as it goes.
 *
 * The layout is not written here: Python passes a spec generated from the contract
 * (`lens_core.ingest.ndjson._canon_spec`), a tree of
 *     ("obj", name, [(key, child), ...])   an object with exactly these keys in this order
 *     ("list", name, item)                 a JSON array of `item` (its lengths are a column)
 *     ("str" | "int" | "num", name, nullable)
 *     ("enum", name, [word, ...])          a string from the vocabulary (kept as a string)
 *     ("flags", name, [word, ...])         an array of vocabulary strings (a 0/1 column per word)
 *
 * It accepts a subset of what `_canonical_line_regex` certifies: strings holding a byte
 * above 0x7F that is not valid UTF-8, a \u escape of a lone surrogate
 * (no UTF-8 form), vocabulary words written with escapes, integers outside int32,
 * number tokens longer than 63 bytes and numbers that overflow a double are declined (the
 * caller then takes the DuckDB + RE2 path, or the exact path). Nothing is ever guessed: a
 * scanner that returns False has seen something it does not accept, and its columns must not be
 * used. Numbers: integers exactly; decimals with Clinger's exact fast path (at most 15
 * significant digits, |exponent| <= 22: one correctly rounded IEEE operation), else glibc's
 * correctly rounded strtod_l in the C locale; so every double equals Python's float(token).
 *
 * Scanner(spec).feed(buffer) parses whole lines (the buffer ends with a newline) with the GIL
 * released; finish() returns [(name, kind, values, data, valid), ...] in spec order.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <locale.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { K_OBJ, K_LIST, K_STR, K_INT, K_NUM, K_ENUM, K_FLAGS };
enum { C_I32, C_F64, C_U8, C_STR };

typedef struct {
    char *p;
    size_t len, cap;
} Buf;

typedef struct {
    int type;
    PyObject *name;
    Buf vals;   /* i32 / f64 / u8 values; for C_STR: int32 offsets (n + 1) */
    Buf data;   /* C_STR: the bytes */
    Buf valid;  /* nullable columns: one 0/1 byte per row */
    int nullable;
} Column;

typedef struct Node {
    int kind, nullable, col, ncols;
    Py_ssize_t n; /* obj: fields; enum/flags: words */
    char **keys;  /* obj: "\"key\":"; enum/flags: the word without quotes */
    Py_ssize_t *keylens;
    struct Node **children; /* obj: one per key; list: children[0] is the item */
} Node;

typedef struct {
    PyObject_HEAD
    Node *root;
    Column *cols;
    int ncols;
    int busy, failed;
} Scanner;

static locale_t c_locale;

static int buf_reserve(Buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) {
        if (cap > ((size_t)1 << 40)) return -1;
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int buf_put(Buf *b, const void *v, size_t n) {
    if (buf_reserve(b, n)) return -1;
    memcpy(b->p + b->len, v, n);
    b->len += n;
    return 0;
}

static void node_free(Node *n) {
    if (!n) return;
    for (Py_ssize_t i = 0; i < n->n; i++) {
        if (n->keys) free(n->keys[i]);
        if (n->children && n->kind == K_OBJ) node_free(n->children[i]);
    }
    if (n->kind == K_LIST && n->children) node_free(n->children[0]);
    free(n->keys);
    free(n->keylens);
    free(n->children);
    free(n);
}

/* ---------------------------------------------------------------------------------------- */
/* spec -> node tree                                                                          */
/* ---------------------------------------------------------------------------------------- */

static int add_column(Scanner *s, int type, PyObject *name, int nullable) {
    Column *c = realloc(s->cols, sizeof(Column) * (s->ncols + 1));
    if (!c) { PyErr_NoMemory(); return -1; }
    s->cols = c;
    Column *col = &s->cols[s->ncols];
    memset(col, 0, sizeof(Column));
    col->type = type;
    col->nullable = nullable;
    Py_INCREF(name);
    col->name = name;
    if (type == C_STR) {
        int32_t zero = 0;
        if (buf_put(&col->vals, &zero, 4)) { PyErr_NoMemory(); return -1; }
    }
    return s->ncols++;
}

static char *dup_utf8(PyObject *o, Py_ssize_t *len, const char *prefix, const char *suffix) {
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(o, &n);
    if (!u) return NULL;
    size_t a = strlen(prefix), b = strlen(suffix);
    char *out = malloc(a + n + b + 1);
    if (!out) { PyErr_NoMemory(); return NULL; }
    memcpy(out, prefix, a);
    memcpy(out + a, u, n);
    memcpy(out + a + n, suffix, b + 1);
    *len = a + n + b;
    return out;
}

static Node *build(Scanner *s, PyObject *spec) {
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 3) {
        PyErr_SetString(PyExc_TypeError, "spec node must be a 3-tuple (kind, name, arg)");
        return NULL;
    }
    const char *kind = PyUnicode_AsUTF8(PyTuple_GET_ITEM(spec, 0));
    PyObject *name = PyTuple_GET_ITEM(spec, 1), *arg = PyTuple_GET_ITEM(spec, 2);
    if (!kind || !PyUnicode_Check(name)) {
        PyErr_SetString(PyExc_TypeError, "spec node kind and name must be str");
        return NULL;
    }
    Node *n = calloc(1, sizeof(Node));
    if (!n) { PyErr_NoMemory(); return NULL; }
    if (!strcmp(kind, "obj") || !strcmp(kind, "enum") || !strcmp(kind, "flags")) {
        PyObject *seq = PySequence_Fast(arg, "spec: obj/enum/flags take a list");
        if (!seq) goto fail;
        Py_ssize_t m = PySequence_Fast_GET_SIZE(seq);
        n->kind = !strcmp(kind, "obj") ? K_OBJ : !strcmp(kind, "enum") ? K_ENUM : K_FLAGS;
        n->keys = calloc(m ? m : 1, sizeof(char *));
        n->keylens = calloc(m ? m : 1, sizeof(Py_ssize_t));
        n->children = n->kind == K_OBJ ? calloc(m ? m : 1, sizeof(Node *)) : NULL;
        if (!n->keys || !n->keylens || (n->kind == K_OBJ && !n->children)) {
            Py_DECREF(seq); PyErr_NoMemory(); goto fail;
        }
        if (n->kind == K_ENUM) n->col = add_column(s, C_STR, name, 0);
        for (Py_ssize_t i = 0; i < m; i++) {
            PyObject *it = PySequence_Fast_GET_ITEM(seq, i);
            n->n = i + 1;
            if (n->kind == K_OBJ) {
                if (!PyTuple_Check(it) || PyTuple_GET_SIZE(it) != 2) {
                    Py_DECREF(seq); PyErr_SetString(PyExc_TypeError, "spec: obj fields are (key, node)"); goto fail;
                }
                n->keys[i] = dup_utf8(PyTuple_GET_ITEM(it, 0), &n->keylens[i], "\"", "\":");
                if (!n->keys[i]) { Py_DECREF(seq); goto fail; }
                n->children[i] = build(s, PyTuple_GET_ITEM(it, 1));
                if (!n->children[i]) { Py_DECREF(seq); goto fail; }
            } else {
                n->keys[i] = dup_utf8(it, &n->keylens[i], "", "");
                if (!n->keys[i]) { Py_DECREF(seq); goto fail; }
                if (n->kind == K_FLAGS) {
                    PyObject *cname = PyUnicode_FromFormat("%U.%U", name, it);
                    if (!cname) { Py_DECREF(seq); goto fail; }
                    int c = add_column(s, C_U8, cname, 0);
                    Py_DECREF(cname);
                    if (c < 0) { Py_DECREF(seq); goto fail; }
                    if (i == 0) n->col = c;
                }
            }
        }
        Py_DECREF(seq);
        if (n->kind == K_ENUM && n->col < 0) goto fail;
        if (n->kind == K_FLAGS && m > 64) {
            PyErr_SetString(PyExc_ValueError, "spec: at most 64 flag words"); goto fail;
        }
        return n;
    }
    if (!strcmp(kind, "list")) {
        n->kind = K_LIST;
        n->col = add_column(s, C_I32, name, 0); /* each row's number of items */
        if (n->col < 0) goto fail;
        n->children = calloc(1, sizeof(Node *));
        if (!n->children) { PyErr_NoMemory(); goto fail; }
        n->children[0] = build(s, arg);
        if (!n->children[0]) goto fail;
        return n;
    }
    int type;
    if (!strcmp(kind, "str")) { n->kind = K_STR; type = C_STR; }
    else if (!strcmp(kind, "int")) { n->kind = K_INT; type = C_I32; }
    else if (!strcmp(kind, "num")) { n->kind = K_NUM; type = C_F64; }
    else { PyErr_Format(PyExc_ValueError, "spec: unknown kind %s", kind); goto fail; }
    n->nullable = PyObject_IsTrue(arg);
    if (n->nullable < 0) goto fail;
    n->col = add_column(s, type, name, n->nullable);
    if (n->col < 0) goto fail;
    return n;
fail:
    node_free(n);
    return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* parsing (no Python API: runs without the GIL)                                              */
/* ---------------------------------------------------------------------------------------- */

/* 1: an ASCII byte a string may hold as is (0x20-0x7F but " and \); 0 otherwise */
static unsigned char plain[256];

/* Length of the valid UTF-8 sequence at p (2..4), or 0 (Unicode 15, table 3-7: no overlong
 * forms, no surrogates, nothing above U+10FFFF). */
static inline int utf8_len(const unsigned char *p, const unsigned char *end) {
    unsigned char c = p[0];
    if (c >= 0xC2 && c <= 0xDF) {
        return (end - p >= 2 && (p[1] & 0xC0) == 0x80) ? 2 : 0;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        if (end - p < 3) return 0;
        unsigned char lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        return (p[1] >= lo && p[1] <= hi && (p[2] & 0xC0) == 0x80) ? 3 : 0;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (end - p < 4) return 0;
        unsigned char lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        return (p[1] >= lo && p[1] <= hi && (p[2] & 0xC0) == 0x80 && (p[3] & 0xC0) == 0x80) ? 4 : 0;
    }
    return 0;
}

/* A JSON string without escapes at *pp: its bytes [*s, *s + *len); advances past the quote. */
static inline int scan_str(const unsigned char **pp, const unsigned char *end,
                           const unsigned char **s, size_t *len) {
    const unsigned char *p = *pp;
    if (p >= end || *p != '"') return -1;
    p++;
    const unsigned char *start = p;
    for (;;) {
        while (p < end && plain[*p]) p++;
        if (p >= end) return -1;
        if (*p == '"') break;
        if (*p < 0x80) return -1; /* a backslash escape or a control byte */
        int k = utf8_len(p, end);
        if (!k) return -1;
        p += k;
    }
    *s = start;
    *len = (size_t)(p - start);
    *pp = p + 1;
    return 0;
}

static inline int hex4(const unsigned char *p, const unsigned char *end, unsigned *cp) {
    if (end - p < 4) return -1;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else return -1;
    }
    *cp = v;
    return 0;
}

/* A JSON string at *pp, its value (escapes decoded, UTF-8) appended to `out`; advances past
 * the closing quote. A \u escape of a lone surrogate is declined (it has no UTF-8 form). */
static int scan_str_into(const unsigned char **pp, const unsigned char *end, Buf *out) {
    const unsigned char *p = *pp;
    if (p >= end || *p != '"') return -1;
    p++;
    for (;;) {
        const unsigned char *run = p;
        while (p < end && plain[*p]) p++;
        if (p > run && buf_put(out, run, (size_t)(p - run))) return -1;
        if (p >= end) return -1;
        if (*p == '"') break;
        if (*p >= 0x80) {
            int k = utf8_len(p, end);
            if (!k || buf_put(out, p, (size_t)k)) return -1;
            p += k;
            continue;
        }
        if (*p != '\\' || end - p < 2) return -1; /* a raw control byte */
        unsigned char e = p[1], c;
        p += 2;
        switch (e) {
        case '"': c = '"'; break;
        case '\\': c = '\\'; break;
        case '/': c = '/'; break;
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'n': c = '\n'; break;
        case 'r': c = '\r'; break;
        case 't': c = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (hex4(p, end, &cp)) return -1;
            p += 4;
            if (cp >= 0xDC00 && cp <= 0xDFFF) return -1;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, end, &lo)
                    || lo < 0xDC00 || lo > 0xDFFF) return -1;
                p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            unsigned char u[4];
            size_t n;
            if (cp < 0x80) { u[0] = (unsigned char)cp; n = 1; }
            else if (cp < 0x800) { u[0] = 0xC0 | (cp >> 6); u[1] = 0x80 | (cp & 0x3F); n = 2; }
            else if (cp < 0x10000) {
                u[0] = 0xE0 | (cp >> 12); u[1] = 0x80 | ((cp >> 6) & 0x3F); u[2] = 0x80 | (cp & 0x3F); n = 3;
            } else {
                u[0] = 0xF0 | (cp >> 18); u[1] = 0x80 | ((cp >> 12) & 0x3F);
                u[2] = 0x80 | ((cp >> 6) & 0x3F); u[3] = 0x80 | (cp & 0x3F); n = 4;
            }
            if (buf_put(out, u, n)) return -1;
            continue;
        }
        default: return -1;
        }
        if (buf_put(out, &c, 1)) return -1;
    }
    *pp = p + 1;
    return 0;
}

static inline int lit(const unsigned char **pp, const unsigned char *end, const char *w, size_t n) {
    if ((size_t)(end - *pp) < n || memcmp(*pp, w, n)) return -1;
    *pp += n;
    return 0;
}

static const double pow10_exact[23] = {
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* A JSON number token (RFC 8259 grammar, as `_JSON_NUM`); integer_only: `_JSON_INT` and int32. */
static inline int scan_num(const unsigned char **pp, const unsigned char *end, int integer_only,
                           double *d, int32_t *i) {
    const unsigned char *p = *pp, *tok = p;
    int neg = 0;
    if (p < end && *p == '-') { neg = 1; p++; }
    if (p >= end || *p < '0' || *p > '9') return -1;
    uint64_t w = 0;
    int digits = 0;       /* significant digits kept in w */
    int dropped = 0;      /* integer digits beyond 19 (the slow path handles them) */
    if (*p == '0') {
        p++;
    } else {
        while (p < end && *p >= '0' && *p <= '9') {
            if (digits < 19) { w = w * 10 + (*p - '0'); if (w) digits++; } else dropped = 1;
            p++;
        }
    }
    int frac = 0, has_frac = 0, has_exp = 0;
    long e = 0;
    if (p < end && *p == '.') {
        has_frac = 1;
        p++;
        if (p >= end || *p < '0' || *p > '9') return -1;
        while (p < end && *p >= '0' && *p <= '9') {
            if (digits < 19) { w = w * 10 + (*p - '0'); if (w) digits++; frac++; } else dropped = 1;
            p++;
        }
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        has_exp = 1;
        p++;
        int eneg = 0;
        if (p < end && (*p == '+' || *p == '-')) { eneg = *p == '-'; p++; }
        if (p >= end || *p < '0' || *p > '9') return -1;
        while (p < end && *p >= '0' && *p <= '9') {
            if (e < 100000) e = e * 10 + (*p - '0');
            p++;
        }
        if (eneg) e = -e;
    }
    *pp = p;
    if (integer_only) {
        if (has_frac || has_exp || dropped || digits > 10) return -1;
        if (neg ? w > 2147483648ULL : w > 2147483647ULL) return -1;
        *i = neg ? (int32_t)(-(int64_t)w) : (int32_t)w;
        return 0;
    }
    long e10 = e - frac;
    if (!dropped && digits <= 15 && e10 >= -22 && e10 <= 22) {
        double v = (double)w; /* exact: w < 2^53 */
        v = e10 < 0 ? v / pow10_exact[-e10] : v * pow10_exact[e10];
        *d = neg ? -v : v;
        return 0;
    }
    size_t n = (size_t)(p - tok);
    char tmp[64];
    if (n >= sizeof tmp) return -1;
    memcpy(tmp, tok, n);
    tmp[n] = 0;
    char *stop;
    double v = strtod_l(tmp, &stop, c_locale);
    if (stop != tmp + n || isinf(v) || isnan(v)) return -1;
    *d = v;
    return 0;
}

static inline int is_null(const unsigned char **pp, const unsigned char *end) {
    if (end - *pp >= 4 && !memcmp(*pp, "null", 4)) { *pp += 4; return 1; }
    return 0;
}

static int end_str(Column *c) {
    if (c->data.len > INT32_MAX) return -1;
    int32_t off = (int32_t)c->data.len;
    return buf_put(&c->vals, &off, 4);
}

static int parse(Scanner *sc, Node *n, const unsigned char **pp, const unsigned char *end) {
    Column *c;
    switch (n->kind) {
    case K_OBJ:
        if (lit(pp, end, "{", 1)) return -1;
        for (Py_ssize_t i = 0; i < n->n; i++) {
            if (i && lit(pp, end, ",", 1)) return -1;
            if (lit(pp, end, n->keys[i], (size_t)n->keylens[i])) return -1;
            if (parse(sc, n->children[i], pp, end)) return -1;
        }
        return lit(pp, end, "}", 1);
    case K_LIST: {
        if (lit(pp, end, "[", 1)) return -1;
        int32_t k = 0;
        if (*pp < end && **pp == ']') {
            (*pp)++;
        } else {
            for (;;) {
                if (parse(sc, n->children[0], pp, end)) return -1;
                if (k == INT32_MAX) return -1;
                k++;
                if (*pp < end && **pp == ',') { (*pp)++; continue; }
                if (lit(pp, end, "]", 1)) return -1;
                break;
            }
        }
        return buf_put(&sc->cols[n->col].vals, &k, 4);
    }
    case K_FLAGS: {
        uint64_t seen = 0;
        if (lit(pp, end, "[", 1)) return -1;
        if (*pp < end && **pp == ']') {
            (*pp)++;
        } else {
            for (;;) {
                const unsigned char *s;
                size_t len;
                if (scan_str(pp, end, &s, &len)) return -1;
                Py_ssize_t w = 0;
                while (w < n->n && !((size_t)n->keylens[w] == len && !memcmp(n->keys[w], s, len))) w++;
                if (w == n->n) return -1;
                seen |= (uint64_t)1 << w;
                if (*pp < end && **pp == ',') { (*pp)++; continue; }
                if (lit(pp, end, "]", 1)) return -1;
                break;
            }
        }
        for (Py_ssize_t w = 0; w < n->n; w++) {
            unsigned char f = (seen >> w) & 1;
            if (buf_put(&sc->cols[n->col + w].vals, &f, 1)) return -1;
        }
        return 0;
    }
    default:
        break;
    }
    c = &sc->cols[n->col];
    unsigned char ok = 1;
    if (n->nullable && is_null(pp, end)) {
        ok = 0;
        if (buf_put(&c->valid, &ok, 1)) return -1;
        switch (n->kind) {
        case K_STR: { int32_t off = (int32_t)c->data.len; return buf_put(&c->vals, &off, 4); }
        case K_INT: { int32_t z = 0; return buf_put(&c->vals, &z, 4); }
        default: { double z = 0.0; return buf_put(&c->vals, &z, 8); }
        }
    }
    if (n->nullable && buf_put(&c->valid, &ok, 1)) return -1;
    switch (n->kind) {
    case K_STR:
        if (scan_str_into(pp, end, &c->data)) return -1;
        return end_str(c);
    case K_ENUM: {
        const unsigned char *s;
        size_t len;
        if (scan_str(pp, end, &s, &len)) return -1;
        Py_ssize_t w = 0;
        while (w < n->n && !((size_t)n->keylens[w] == len && !memcmp(n->keys[w], s, len))) w++;
        if (w == n->n || buf_put(&c->data, s, len)) return -1;
        return end_str(c);
    }
    case K_INT: {
        int32_t v;
        double unused;
        if (scan_num(pp, end, 1, &unused, &v)) return -1;
        return buf_put(&c->vals, &v, 4);
    }
    case K_NUM: {
        double v;
        int32_t unused;
        if (scan_num(pp, end, 0, &v, &unused)) return -1;
        return buf_put(&c->vals, &v, 8);
    }
    }
    return -1;
}

/* Whole lines, each one record then a newline. */
static int parse_lines(Scanner *sc, const unsigned char *p, const unsigned char *end) {
    while (p < end) {
        if (parse(sc, sc->root, &p, end)) return -1;
        if (p >= end || *p != '\n') return -1;
        p++;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Python type                                                                                */
/* ---------------------------------------------------------------------------------------- */

static void Scanner_dealloc(Scanner *s) {
    node_free(s->root);
    for (int i = 0; i < s->ncols; i++) {
        Py_XDECREF(s->cols[i].name);
        free(s->cols[i].vals.p);
        free(s->cols[i].data.p);
        free(s->cols[i].valid.p);
    }
    free(s->cols);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static int Scanner_init(Scanner *s, PyObject *args, PyObject *kw) {
    PyObject *spec;
    static char *kwlist[] = {"spec", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O", kwlist, &spec)) return -1;
    if (s->root || s->ncols) {
        PyErr_SetString(PyExc_RuntimeError, "Scanner already initialised");
        return -1;
    }
    s->root = build(s, spec);
    if (!s->root) return -1;
    if (s->root->kind != K_OBJ) {
        PyErr_SetString(PyExc_ValueError, "spec: the root must be an obj");
        return -1;
    }
    return 0;
}

static PyObject *Scanner_feed(Scanner *s, PyObject *arg) {
    if (!s->root) { PyErr_SetString(PyExc_RuntimeError, "Scanner not initialised"); return NULL; }
    if (s->busy) { PyErr_SetString(PyExc_RuntimeError, "Scanner used by two threads at once"); return NULL; }
    if (s->failed) Py_RETURN_FALSE;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    s->busy = 1;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = parse_lines(s, (const unsigned char *)view.buf, (const unsigned char *)view.buf + view.len);
    Py_END_ALLOW_THREADS
    s->busy = 0;
    PyBuffer_Release(&view);
    if (rc) { s->failed = 1; Py_RETURN_FALSE; }
    Py_RETURN_TRUE;
}

static PyObject *bytes_of(Buf *b) {
    return PyBytes_FromStringAndSize(b->p ? b->p : "", (Py_ssize_t)b->len);
}

static PyObject *Scanner_finish(Scanner *s, PyObject *unused) {
    if (!s->root || s->failed || s->busy) {
        PyErr_SetString(PyExc_RuntimeError, "finish() on a scanner that is not initialised, failed or busy");
        return NULL;
    }
    static const char *types[] = {"i32", "f64", "u8", "str"};
    PyObject *out = PyList_New(s->ncols);
    if (!out) return NULL;
    for (int i = 0; i < s->ncols; i++) {
        Column *c = &s->cols[i];
        PyObject *vals = bytes_of(&c->vals);
        PyObject *data = c->type == C_STR ? bytes_of(&c->data) : (Py_INCREF(Py_None), Py_None);
        PyObject *valid = c->nullable ? bytes_of(&c->valid) : (Py_INCREF(Py_None), Py_None);
        PyObject *t = (vals && data && valid) ? Py_BuildValue("(OsOOO)", c->name, types[c->type], vals, data, valid) : NULL;
        Py_XDECREF(vals);
        Py_XDECREF(data);
        Py_XDECREF(valid);
        if (!t) { Py_DECREF(out); return NULL; }
        PyList_SET_ITEM(out, i, t);
    }
    return out;
}

static PyMethodDef Scanner_methods[] = {
    {"feed", (PyCFunction)Scanner_feed, METH_O,
     "feed(buffer) -> bool: parse whole record lines (each ending in a newline); False once "
     "anything is not in the canonical layout (the scanner is then unusable)."},
    {"finish", (PyCFunction)Scanner_finish, METH_NOARGS,
     "finish() -> [(name, type, values, data, valid)]: the columns, in spec order."},
    {NULL}};

static PyTypeObject ScannerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lens_core.ingest._canonscan.Scanner",
    .tp_basicsize = sizeof(Scanner),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Parser of canonical raw-run record lines into column buffers.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Scanner_init,
    .tp_dealloc = (destructor)Scanner_dealloc,
    .tp_methods = Scanner_methods,
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_canonscan",
    "Canonical raw-run scanner (see lens_core.ingest.ndjson).", -1, NULL};

PyMODINIT_FUNC PyInit__canonscan(void) {
    for (int c = 0x20; c <= 0x7F; c++) plain[c] = c != '"' && c != '\\';
    c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
    if (!c_locale) return PyErr_NoMemory();
    if (PyType_Ready(&ScannerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    Py_INCREF(&ScannerType);
    if (PyModule_AddObject(m, "Scanner", (PyObject *)&ScannerType) < 0) {
        Py_DECREF(&ScannerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
