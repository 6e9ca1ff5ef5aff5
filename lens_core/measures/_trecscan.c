/* TREC qrels + run reader for `lens-eval trec` (issue 19): both files in one pass each, in
 * bounded chunks, into column buffers that Python wraps as numpy arrays without a copy.
 *
 * The reading is the general reader's (`lens_core.measures.trec._lines` / `_fields`): a line is
 * stripped of spaces, tabs and CRs at both ends; blank lines and lines starting with `#` are
 * skipped; fields are separated by any run of spaces, tabs or CRs; a qrels line has exactly 4
 * fields (qid iter docno grade), a run line at least 6 (qid iter docno rank score tag ...).
 *
 * It accepts a subset of what the general reader accepts and never guesses: at anything else it
 * returns None and the caller takes the general reader, which names the bad line (the
 * validation contract's `file:line` error) or reads the unusual file. Declined: a C0 control
 * byte other than tab/LF/CR, bytes that are not UTF-8, a line over MAX_TREC_LINE bytes, a line
 * with too few (or, qrels, too many) fields, a score that is not a plain decimal
 * ([-]digits[.digits][e[+-]digits], at most 63 bytes) or not finite, a grade that is not
 * [-]digits (at most 18), a docno twice in one query (either file), a run query in two
 * blocks, an empty file. Scores: Clinger's exact fast path (at most 15 significant digits,
 * |exponent| <= 22: one correctly rounded IEEE operation), else glibc's correctly rounded
 * strtod_l in the C locale: every double equals polars' (and Python's) parse of the token.
 *
 * Docnos are never kept: each is a 128-bit hash (two 64-bit lanes), and a run line's docno is
 * looked up at once in a hash table of the qrels' (query, docno) keys, so the run comes back as
 * three columns per line: score (f64), the matching qrels row or -1 (i32), nothing else.
 *
 * scan(qrels_path, run_path, max_line) -> None, or
 *   (qrels_qids: list[str] (first-appearance order), qrels_q: i32 bytes, qrels_rel: i64 bytes,
 *    blocks: list[str] (the run's queries, file order), block_q: i32 (qrels index or -1),
 *    starts: i64 (len(blocks) + 1), score: f64, match: i32, runid: str, ordered: bool)
 * `ordered`: every block's scores strictly descending (trec_eval's ranking order, no tie).
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <fcntl.h>
#include <locale.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK (1 << 22)

typedef struct {
    PyObject *ba; /* a bytearray, grown by doubling */
    Py_ssize_t len;
} Col;

static int col_init(Col *c, Py_ssize_t cap) {
    c->ba = PyByteArray_FromStringAndSize(NULL, cap);
    c->len = 0;
    return c->ba ? 0 : -1;
}

static inline int col_reserve(Col *c, Py_ssize_t extra) {
    Py_ssize_t cap = PyByteArray_GET_SIZE(c->ba);
    if (c->len + extra <= cap) return 0;
    Py_ssize_t want = cap + cap / 2 + extra + 4096;
    return PyByteArray_Resize(c->ba, want);
}

static inline __attribute__((always_inline)) int col_put(Col *c, const void *v, Py_ssize_t n) {
    if (col_reserve(c, n) < 0) return -1;
    char *dst = PyByteArray_AS_STRING(c->ba) + c->len;
    if (n == 8) memcpy(dst, v, 8); /* constant sizes: inlined moves, no call */
    else if (n == 4) memcpy(dst, v, 4);
    else memcpy(dst, v, (size_t)n);
    c->len += n;
    return 0;
}

static PyObject *col_finish(Col *c) {
    if (PyByteArray_Resize(c->ba, c->len) < 0) return NULL;
    PyObject *r = c->ba;
    c->ba = NULL;
    return r;
}

static void col_free(Col *c) { Py_CLEAR(c->ba); }

/* ------------------------------------------------------------------ hashing */
static inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t fmix(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
}

/* MurmurHash3 x64-128's body and finalisation (two dependent lanes, 128 bits out). */
static void hash128(const unsigned char *p, size_t n, uint64_t *o1, uint64_t *o2) {
    const uint64_t c1 = 0x87c37b91114253d5ULL, c2 = 0x4cf5ad432745937fULL;
    uint64_t h1 = 0x5EED0001ULL, h2 = 0x5EED0002ULL;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        uint64_t k1, k2;
        memcpy(&k1, p + i, 8);
        memcpy(&k2, p + i + 8, 8);
        k1 *= c1; k1 = rotl(k1, 31); k1 *= c2; h1 ^= k1;
        h1 = rotl(h1, 27); h1 += h2; h1 = h1 * 5 + 0x52dce729;
        k2 *= c2; k2 = rotl(k2, 33); k2 *= c1; h2 ^= k2;
        h2 = rotl(h2, 31); h2 += h1; h2 = h2 * 5 + 0x38495ab5;
    }
    unsigned char tail[16] = {0};
    memcpy(tail, p + i, n - i);
    if (n - i) {
        uint64_t k1, k2;
        memcpy(&k1, tail, 8);
        memcpy(&k2, tail + 8, 8);
        k2 *= c2; k2 = rotl(k2, 33); k2 *= c1; h2 ^= k2;
        k1 *= c1; k1 = rotl(k1, 31); k1 *= c2; h1 ^= k1;
    }
    h1 ^= (uint64_t)n; h2 ^= (uint64_t)n;
    h1 += h2; h2 += h1;
    h1 = fmix(h1); h2 = fmix(h2);
    h1 += h2; h2 += h1;
    *o1 = h1;
    *o2 = h2;
}

/* open addressing: (q, k1, k2) -> row; slots hold row + 1 (0: empty) */
typedef struct {
    int32_t *slot;
    size_t mask;
} Table;

static inline size_t slot_of(int32_t q, uint64_t k1, size_t mask) {
    return (size_t)fmix(k1 ^ ((uint64_t)(uint32_t)q * 0x9E3779B97F4A7C15ULL)) & mask;
}

/* ------------------------------------------------------------------ numbers */
static const double POW10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                               1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
static locale_t c_locale;

/* a plain decimal: [-]digits[.digits][(e|E)[+-]digits] or [-].digits[...]; 0 and *out, or -1 */
static int parse_score(const char *s, size_t n, double *out) {
    if (n == 0 || n > 63) return -1;
    size_t i = 0;
    int neg = 0;
    if (s[i] == '-') { neg = 1; i++; }
    uint64_t mant = 0;
    int sig = 0, nd = 0, exp10 = 0, over = 0;
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++, nd++) {
        if (mant == 0 && s[i] == '0') continue;
        if (sig < 19) { mant = mant * 10 + (uint64_t)(s[i] - '0'); sig++; }
        else { over = 1; exp10++; }
    }
    if (i < n && s[i] == '.') {
        i++;
        for (; i < n && s[i] >= '0' && s[i] <= '9'; i++, nd++) {
            if (mant == 0 && s[i] == '0') { exp10--; continue; }
            if (sig < 19) { mant = mant * 10 + (uint64_t)(s[i] - '0'); sig++; exp10--; }
            else over = 1;
        }
    }
    if (nd == 0) return -1;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        int eneg = 0, ed = 0;
        long e = 0;
        if (i < n && (s[i] == '+' || s[i] == '-')) { eneg = s[i] == '-'; i++; }
        for (; i < n && s[i] >= '0' && s[i] <= '9'; i++, ed++)
            if (e < 100000) e = e * 10 + (s[i] - '0');
        if (ed == 0) return -1;
        exp10 += (int)(eneg ? -e : e);
    }
    if (i != n) return -1;
    double v;
    if (!over && sig <= 15 && exp10 >= -22 && exp10 <= 22) {
        v = (double)mant;
        v = exp10 < 0 ? v / POW10[-exp10] : v * POW10[exp10];
        if (mant == 0) v = 0.0;
    } else {
        char buf[64];
        memcpy(buf, s, n);
        buf[n] = 0;
        v = strtod_l(buf, NULL, c_locale); /* the sign included */
        neg = 0;
    }
    if (!isfinite(v)) return -1;
    *out = neg ? -v : v;
    return 0;
}

static int parse_grade(const char *s, size_t n, int64_t *out) {
    size_t i = 0;
    int neg = 0;
    if (n && s[0] == '-') { neg = 1; i = 1; }
    if (i == n || n - i > 18) return -1;
    int64_t v = 0;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = neg ? -v : v;
    return 0;
}

/* ------------------------------------------------------------------ lines */
static inline int is_sep(unsigned char c) { return c == ' ' || c == '\t' || c == '\r'; }

/* every byte checked: no C0 control but tab/CR, valid UTF-8 (Python's strict decoder's rules) */
static int line_ok(const unsigned char *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = p[i];
        if (c < 0x80) {
            if (c < 32 && c != '\t' && c != '\r') return 0;
            i++;
            continue;
        }
        size_t len;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07; }
        else return 0;
        if (i + len > n) return 0;
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;
        i += len;
    }
    return 1;
}

/* byte classes: 0 ordinary ASCII, 1 separator (space, tab, CR), 2 a refused C0 control byte,
 * 3 a byte above 0x7F (the line is then checked as UTF-8) */
static unsigned char CLS[256];

static void init_cls(void) {
    for (int c = 0; c < 256; c++) CLS[c] = c >= 0x80 ? 3 : c < 32 ? 2 : 0;
    CLS[' '] = CLS['\t'] = CLS['\r'] = 1;
}

/* no byte of the word below 0x20 nor above 0x7F */
static inline int word_plain(uint64_t w) {
    const uint64_t ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL;
    return ((w | ((w - 0x20 * ones) & ~w)) & high) == 0;
}

/* the rest of a line, after its fields: every byte checked */
static int rest_ok(const unsigned char *p, size_t n, int *high) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        if (!word_plain(w)) break;
    }
    for (; i < n; i++) {
        unsigned char c = CLS[p[i]];
        if (c == 2) return 0;
        if (c == 3) *high = 1;
    }
    return 1;
}

/* The data fields of one line, its bytes checked in the same pass: -1 declined (a refused
 * byte), 0 a blank or comment line, else the number of fields (at most maxf + 1 counted;
 * the first maxf kept in f / fl). */
static int fields(const unsigned char *p, size_t n, const unsigned char **f, size_t *fl, int maxf) {
    int nf = 0, high = 0;
    size_t i = 0;
    while (i < n) {
        unsigned char c;
        while (i < n && (c = CLS[p[i]]) != 0) {
            if (c == 2) return -1;
            if (c == 3) break;
            i++;
        }
        if (i >= n) break;
        size_t st = i;
        /* 8 bytes at a time while they are plain ASCII: the field ends at the first space */
        for (; i + 8 <= n; i += 8) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            if (!word_plain(w)) break;
            uint64_t x = w ^ 0x2020202020202020ULL;
            uint64_t t = (x - 0x0101010101010101ULL) & ~x & 0x8080808080808080ULL;
            if (t) {
                i += (size_t)__builtin_ctzll(t) >> 3;
                goto field_end;
            }
        }
        while (i < n && (c = CLS[p[i]]) != 1) {
            if (c == 2) return -1;
            if (c == 3) high = 1;
            i++;
        }
    field_end:
        if (nf < maxf) { f[nf] = p + st; fl[nf] = i - st; }
        nf++;
        if (nf == 1 && p[st] == '#') { nf = 0; break; } /* a comment: bytes still checked below */
        if (nf > maxf) break;
    }
    if (i < n && !rest_ok(p + i, n - i, &high)) return -1;
    if (high && !line_ok(p, n)) return -1;
    return nf;
}

typedef int (*line_fn)(void *st, const unsigned char *p, size_t n);

/* the file in chunks: every line (without its LF) given to fn; -1 declined, -2 error set */
static int each_line(const char *path, size_t max_line, line_fn fn, void *st, int *nonempty) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) { PyErr_SetFromErrnoWithFilename(PyExc_OSError, path); return -2; }
    size_t cap = CHUNK + max_line + 2, have = 0;
    unsigned char *buf = malloc(cap);
    if (!buf) { close(fd); PyErr_NoMemory(); return -2; }
    int rc = 0, eof = 0;
    *nonempty = 0;
    while (!eof) {
        ssize_t got = read(fd, buf + have, cap - have);
        if (got < 0) { PyErr_SetFromErrnoWithFilename(PyExc_OSError, path); rc = -2; break; }
        if (got == 0) eof = 1;
        if (got > 0) *nonempty = 1;
        have += (size_t)got;
        size_t pos = 0;
        for (;;) {
            unsigned char *nl = memchr(buf + pos, '\n', have - pos);
            size_t end;
            if (nl) end = (size_t)(nl - buf);
            else if (eof && pos < have) end = have;
            else break;
            if (end - pos > max_line) { rc = -1; break; }
            rc = fn(st, buf + pos, end - pos);
            if (rc) break;
            pos = nl ? end + 1 : have;
        }
        if (rc) break;
        if (have - pos > max_line) { rc = -1; break; }
        memmove(buf, buf + pos, have - pos);
        have -= pos;
        if (eof) break;
    }
    free(buf);
    close(fd);
    return rc;
}

/* ------------------------------------------------------------------ qrels */
typedef struct {
    PyObject *qmap, *qlist; /* qid str -> index; the qids in order */
    int32_t cur_q;
    unsigned char cur_buf[256];
    size_t cur_n; /* the previous line's qid (<= 255 bytes, else not cached) */
    Col q, rel, k1, k2;
    Py_ssize_t rows;
} Qrels;

static int32_t intern(PyObject *map, PyObject *list, const unsigned char *p, size_t n, int add, int *err) {
    PyObject *s = PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)n, "strict");
    if (!s) { *err = 1; return -1; }
    PyObject *v = PyDict_GetItemWithError(map, s);
    if (v) { Py_DECREF(s); return (int32_t)PyLong_AsLong(v); }
    if (PyErr_Occurred() || !add) { Py_DECREF(s); *err = PyErr_Occurred() != NULL; return -1; }
    Py_ssize_t idx = PyList_GET_SIZE(list);
    PyObject *iv = PyLong_FromSsize_t(idx);
    if (!iv || PyDict_SetItem(map, s, iv) < 0 || PyList_Append(list, s) < 0) {
        Py_XDECREF(iv); Py_DECREF(s); *err = 1; return -1;
    }
    Py_DECREF(iv);
    Py_DECREF(s);
    return (int32_t)idx;
}

static int qrels_line(void *st, const unsigned char *p, size_t n) {
    Qrels *Q = st;
    const unsigned char *f[4];
    size_t fl[4];
    int nf = fields(p, n, f, fl, 4);
    if (nf == 0) return 0;
    if (nf != 4) return -1;
    int64_t g;
    if (parse_grade((const char *)f[3], fl[3], &g) < 0) return -1;
    int32_t q;
    if (Q->cur_n && fl[0] == Q->cur_n && memcmp(f[0], Q->cur_buf, fl[0]) == 0) q = Q->cur_q;
    else {
        int err = 0;
        q = intern(Q->qmap, Q->qlist, f[0], fl[0], 1, &err);
        if (err) return -2;
        Q->cur_q = q;
        Q->cur_n = fl[0] < sizeof Q->cur_buf ? fl[0] : 0;
        if (Q->cur_n) memcpy(Q->cur_buf, f[0], fl[0]);
    }
    uint64_t h1, h2;
    hash128(f[2], fl[2], &h1, &h2);
    if (col_put(&Q->q, &q, 4) < 0 || col_put(&Q->rel, &g, 8) < 0 || col_put(&Q->k1, &h1, 8) < 0 ||
        col_put(&Q->k2, &h2, 8) < 0)
        return -2;
    Q->rows++;
    return 0;
}

/* ------------------------------------------------------------------ run */
typedef struct {
    PyObject *qmap;          /* the qrels' qid -> index */
    PyObject *bmap, *blist;  /* the run's queries: str -> block, in order */
    Table t;                 /* the qrels' keys */
    const int32_t *qq;
    const uint64_t *qk1, *qk2;
    int64_t *gstart;        /* the qrels' rows by query: gstart[q] .. gstart[q + 1] */
    uint64_t *gk1, *gk2;
    int32_t *grow;
    Col bq, starts, score, match;
    Py_ssize_t rows;
    int32_t cur_q;
    unsigned char cur_buf[256];
    size_t cur_n;
    int cur_long; /* the current block's qid was longer than cur_buf: compare through a str */
    PyObject *cur_s;
    /* the current block's docno keys, for the duplicate check */
    uint64_t *bk1, *bk2;
    size_t bn, bcap;
    int32_t *dslot; /* the duplicate check's table, reused across blocks */
    size_t dsize;
    int ordered;
    double last_score;
    unsigned char tag[1024];
    size_t tag_n;
    int tag_long;
} Run;

static int block_dups(Run *R) {
    size_t n = R->bn;
    if (n < 2) return 0;
    size_t size = 8;
    while (size < 2 * n) size <<= 1;
    if (size > R->dsize) {
        free(R->dslot);
        R->dslot = malloc(size * sizeof *R->dslot);
        R->dsize = R->dslot ? size : 0;
        if (!R->dslot) { PyErr_NoMemory(); return -2; }
    }
    int32_t *slot = R->dslot;
    memset(slot, 0, size * sizeof *slot);
    int dup = 0;
    for (size_t i = 0; i < n && !dup; i++) {
        size_t h = (size_t)fmix(R->bk1[i]) & (size - 1);
        while (slot[h]) {
            size_t j = (size_t)slot[h] - 1;
            if (R->bk1[j] == R->bk1[i] && R->bk2[j] == R->bk2[i]) { dup = 1; break; }
            h = (h + 1) & (size - 1);
        }
        slot[h] = (int32_t)i + 1;
    }
    return dup ? -1 : 0;
}

static int run_line(void *st, const unsigned char *p, size_t n) {
    Run *R = st;
    const unsigned char *f[6];
    size_t fl[6];
    int nf = fields(p, n, f, fl, 6);
    if (nf == 0) return 0;
    if (nf < 6) return -1;
    double sc;
    if (parse_score((const char *)f[4], fl[4], &sc) < 0) return -1;
    int same = R->rows > 0 && fl[0] == R->cur_n && !R->cur_long && memcmp(f[0], R->cur_buf, fl[0]) == 0;
    if (!same && R->rows > 0 && R->cur_long) {
        PyObject *s = PyUnicode_DecodeUTF8((const char *)f[0], (Py_ssize_t)fl[0], "strict");
        if (!s) return -2;
        same = PyUnicode_Compare(s, R->cur_s) == 0;
        Py_DECREF(s);
    }
    if (!same) { /* a new block */
        if (R->rows > 0) {
            int rc = block_dups(R);
            if (rc) return rc;
        }
        R->bn = 0;
        PyObject *s = PyUnicode_DecodeUTF8((const char *)f[0], (Py_ssize_t)fl[0], "strict");
        if (!s) return -2;
        if (PyDict_Contains(R->bmap, s)) { Py_DECREF(s); return -1; } /* a query in two blocks */
        PyObject *iv = PyLong_FromSsize_t(PyList_GET_SIZE(R->blist));
        if (!iv || PyDict_SetItem(R->bmap, s, iv) < 0 || PyList_Append(R->blist, s) < 0) {
            Py_XDECREF(iv); Py_DECREF(s); return -2;
        }
        Py_DECREF(iv);
        PyObject *v = PyDict_GetItemWithError(R->qmap, s);
        if (!v && PyErr_Occurred()) { Py_DECREF(s); return -2; }
        R->cur_q = v ? (int32_t)PyLong_AsLong(v) : -1;
        Py_XSETREF(R->cur_s, s);
        R->cur_long = fl[0] >= sizeof R->cur_buf;
        R->cur_n = R->cur_long ? 0 : fl[0];
        if (!R->cur_long) memcpy(R->cur_buf, f[0], fl[0]);
        int64_t start = R->rows;
        if (col_put(&R->bq, &R->cur_q, 4) < 0 || col_put(&R->starts, &start, 8) < 0) return -2;
    } else if (!(sc < R->last_score)) {
        R->ordered = 0;
    }
    R->last_score = sc;
    uint64_t h1, h2;
    hash128(f[2], fl[2], &h1, &h2);
    if (R->bn == R->bcap) {
        R->bcap = R->bcap ? 2 * R->bcap : 1024;
        uint64_t *a = realloc(R->bk1, R->bcap * 8), *b = a ? realloc(R->bk2, R->bcap * 8) : NULL;
        if (a) R->bk1 = a;
        if (b) R->bk2 = b;
        if (!a || !b) { PyErr_NoMemory(); return -2; }
    }
    R->bk1[R->bn] = h1;
    R->bk2[R->bn] = h2;
    R->bn++;
    int32_t m = -1;
    if (R->cur_q >= 0 && R->gstart[R->cur_q + 1] - R->gstart[R->cur_q] <= 64) {
        /* a query's judged keys lie together (sorted by query): a short scan, in cache */
        for (int64_t k = R->gstart[R->cur_q]; k < R->gstart[R->cur_q + 1]; k++)
            if (R->gk1[k] == h1 && R->gk2[k] == h2) { m = R->grow[k]; break; }
    } else if (R->cur_q >= 0) {
        size_t h = slot_of(R->cur_q, h1, R->t.mask);
        while (R->t.slot[h]) {
            int32_t j = R->t.slot[h] - 1;
            if (R->qk1[j] == h1 && R->qk2[j] == h2 && R->qq[j] == R->cur_q) { m = j; break; }
            h = (h + 1) & R->t.mask;
        }
    }
    if (col_put(&R->score, &sc, 8) < 0 || col_put(&R->match, &m, 4) < 0) return -2;
    R->rows++;
    size_t tn = fl[5];
    R->tag_long = tn > sizeof R->tag;
    if (!R->tag_long) { memcpy(R->tag, f[5], tn); R->tag_n = tn; }
    return 0;
}

/* ------------------------------------------------------------------ entry */
static PyObject *declined(void) { Py_RETURN_NONE; }

static PyObject *scan(PyObject *self, PyObject *args) {
    PyObject *qpath_o, *rpath_o;
    Py_ssize_t max_line;
    if (!PyArg_ParseTuple(args, "O&O&n", PyUnicode_FSConverter, &qpath_o, PyUnicode_FSConverter, &rpath_o, &max_line))
        return NULL;
    PyObject *result = NULL;
    Qrels Q;
    Run R;
    memset(&Q, 0, sizeof Q);
    memset(&R, 0, sizeof R);
    Q.qmap = PyDict_New();
    Q.qlist = PyList_New(0);
    R.bmap = PyDict_New();
    R.blist = PyList_New(0);
    if (!Q.qmap || !Q.qlist || !R.bmap || !R.blist) goto done;
    if (col_init(&Q.q, 1 << 16) || col_init(&Q.rel, 1 << 17) || col_init(&Q.k1, 1 << 17) || col_init(&Q.k2, 1 << 17))
        goto done;
    int nonempty, rc;
    rc = each_line(PyBytes_AS_STRING(qpath_o), (size_t)max_line, qrels_line, &Q, &nonempty);
    if (rc == -2) goto done;
    if (rc == -1 || !nonempty || Q.rows == 0) { result = declined(); goto done; }
    /* the qrels' keys: a table, duplicates declined */
    size_t size = 16;
    while (size < 2 * (size_t)Q.rows) size <<= 1;
    R.t.slot = calloc(size, sizeof *R.t.slot);
    if (!R.t.slot) { PyErr_NoMemory(); goto done; }
    R.t.mask = size - 1;
    R.qq = (const int32_t *)PyByteArray_AS_STRING(Q.q.ba);
    R.qk1 = (const uint64_t *)PyByteArray_AS_STRING(Q.k1.ba);
    R.qk2 = (const uint64_t *)PyByteArray_AS_STRING(Q.k2.ba);
    for (Py_ssize_t i = 0; i < Q.rows; i++) {
        size_t h = slot_of(R.qq[i], R.qk1[i], R.t.mask);
        while (R.t.slot[h]) {
            int32_t j = R.t.slot[h] - 1;
            if (R.qk1[j] == R.qk1[i] && R.qk2[j] == R.qk2[i] && R.qq[j] == R.qq[i]) {
                result = declined(); /* a duplicate judged docno: the general reader names it */
                goto done;
            }
            h = (h + 1) & R.t.mask;
        }
        R.t.slot[h] = (int32_t)i + 1;
    }
    /* the qrels' keys grouped by query (a counting sort), for the run's lookups */
    Py_ssize_t nq = PyList_GET_SIZE(Q.qlist);
    R.gstart = calloc((size_t)nq + 2, sizeof *R.gstart);
    R.gk1 = malloc((size_t)Q.rows * 8);
    R.gk2 = malloc((size_t)Q.rows * 8);
    R.grow = malloc((size_t)Q.rows * 4);
    if (!R.gstart || !R.gk1 || !R.gk2 || !R.grow) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < Q.rows; i++) R.gstart[R.qq[i] + 2]++;
    for (Py_ssize_t q = 0; q < nq; q++) R.gstart[q + 2] += R.gstart[q + 1];
    for (Py_ssize_t i = 0; i < Q.rows; i++) {
        int64_t k = R.gstart[R.qq[i] + 1]++;
        R.gk1[k] = R.qk1[i];
        R.gk2[k] = R.qk2[i];
        R.grow[k] = (int32_t)i;
    }
    R.qmap = Q.qmap;
    R.ordered = 1;
    if (col_init(&R.bq, 1 << 16) || col_init(&R.starts, 1 << 17) || col_init(&R.score, 1 << 20) ||
        col_init(&R.match, 1 << 19))
        goto done;
    rc = each_line(PyBytes_AS_STRING(rpath_o), (size_t)max_line, run_line, &R, &nonempty);
    if (rc == -2) goto done;
    if (rc == 0 && R.rows > 0) rc = block_dups(&R);
    if (rc == -2) goto done;
    if (rc == -1 || !nonempty || R.rows == 0 || R.tag_long) { result = declined(); goto done; }
    int64_t end = R.rows;
    if (col_put(&R.starts, &end, 8) < 0) goto done;
    PyObject *runid = PyUnicode_DecodeUTF8((const char *)R.tag, (Py_ssize_t)R.tag_n, "strict");
    if (!runid) goto done;
    PyObject *cols[8] = {col_finish(&Q.q), col_finish(&Q.rel), col_finish(&R.bq), col_finish(&R.starts),
                         col_finish(&R.score), col_finish(&R.match), NULL, NULL};
    int ok = 1;
    for (int i = 0; i < 6; i++) ok &= cols[i] != NULL;
    if (ok)
        result = Py_BuildValue("(OOOOOOOONO)", Q.qlist, cols[0], cols[1], R.blist, cols[2], cols[3], cols[4], cols[5],
                               runid, R.ordered ? Py_True : Py_False);
    else
        Py_DECREF(runid);
    for (int i = 0; i < 6; i++) Py_XDECREF(cols[i]);
done:
    free(R.t.slot);
    free(R.gstart);
    free(R.gk1);
    free(R.gk2);
    free(R.grow);
    free(R.bk1);
    free(R.bk2);
    free(R.dslot);
    Py_XDECREF(R.cur_s);
    col_free(&Q.q); col_free(&Q.rel); col_free(&Q.k1); col_free(&Q.k2);
    col_free(&R.bq); col_free(&R.starts); col_free(&R.score); col_free(&R.match);
    Py_XDECREF(Q.qmap);
    Py_XDECREF(Q.qlist);
    Py_XDECREF(R.bmap);
    Py_XDECREF(R.blist);
    Py_DECREF(qpath_o);
    Py_DECREF(rpath_o);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "scan(qrels_path, run_path, max_line) -> columns, or None (the general reader)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_trecscan", "TREC qrels + run reader (issue 19)", -1,
                                    methods};

PyMODINIT_FUNC PyInit__trecscan(void) {
    init_cls();
    c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
    if (!c_locale) return PyErr_NoMemory();
    return PyModule_Create(&module);
}
