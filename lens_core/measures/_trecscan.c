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
 * A run of at least `min_split` bytes is read in two parts at once (two threads, without the
 * GIL): the file is cut after the first LF at or after its middle byte, each part keeps its
 * queries as bytes (looked up in a C table of the qrels' queries) and the parts are joined in
 * file order, where one pass's checks are made across the cut: a query's block cut in two is one
 * block (its docnos checked for duplicates together, its scores' order across the cut), a query
 * in two blocks and the last line's tag as in one pass (issue 19: the read is ~0.7 s of the ~0.95 s
 * of `lens-eval trec` on 4.9 M lines; 0.94 -> 0.61 s on two cores).
 *
 * scan(qrels_path, run_path, max_line, min_split=2**24) -> None, or
 *   (qrels_qids: list[str] (first-appearance order), qrels_q: i32 bytes, qrels_rel: i64 bytes,
 *    blocks: list[str] (the run's queries, file order), block_q: i32 (qrels index or -1),
 *    starts: i64 (len(blocks) + 1), score: f64, match: i32, runid: str, ordered: bool)
 * `ordered`: every block's scores strictly descending (trec_eval's ranking order, no tie).
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <pthread.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

/* Bytes [lo, hi) of a file (hi: SIZE_MAX, to its end; a range starts at a line's start) in
 * chunks: every line (without its LF) given to fn. Touches no Python object (the run's parts call
 * it without the GIL). 0; -1 declined (by fn, or a line over max_line); what fn returned else
 * (-2); -3 an OS error (*err_no); -4 out of memory. *nonempty: some byte was read. */
static int read_lines(const char *path, size_t lo, size_t hi, size_t max_line, line_fn fn, void *st, int *nonempty,
                      int *err_no) {
    *nonempty = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) { *err_no = errno; return -3; }
    size_t cap = CHUNK + max_line + 2, have = 0, off = lo;
    unsigned char *buf = malloc(cap);
    if (!buf) { close(fd); return -4; }
    int rc = 0, eof = 0;
    while (!eof) {
        size_t want = cap - have;
        if (hi != SIZE_MAX && want > hi - off) want = hi - off;
        ssize_t got = want ? pread(fd, buf + have, want, (off_t)off) : 0;
        if (got < 0) { *err_no = errno; rc = -3; break; }
        if (got == 0) eof = 1;
        if (got > 0) *nonempty = 1;
        off += (size_t)got;
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
/* The run is read in parts (two threads on a big file: each part a range of whole lines), none
 * of which touches a Python object: a part's queries are kept as bytes and looked up in a C
 * table of the qrels' queries; the parts are joined, with the GIL, in file order (`join_parts`).
 * Every check is the one-pass reader's: a query in two blocks and a docno twice in a block are
 * found across the parts' boundary too. */

/* growable plain memory (no GIL needed) */
typedef struct {
    char *p;
    size_t len, cap;
} Buf;

static inline __attribute__((always_inline)) int buf_put(Buf *b, const void *v, size_t n) {
    if (b->len + n > b->cap) {
        size_t want = b->cap + b->cap / 2 + n + 4096;
        char *q = realloc(b->p, want);
        if (!q) return -2;
        b->p = q;
        b->cap = want;
    }
    if (n == 8) memcpy(b->p + b->len, v, 8);
    else if (n == 4) memcpy(b->p + b->len, v, 4);
    else memcpy(b->p + b->len, v, n);
    b->len += n;
    return 0;
}

static void buf_free(Buf *b) { free(b->p); b->p = NULL; b->len = b->cap = 0; }

/* the qrels' queries: UTF-8 bytes -> index (open addressing; slots hold index + 1) */
typedef struct {
    int32_t *slot;
    size_t mask;
    const char **s;
    Py_ssize_t *n;
} QTable;

static inline uint64_t bytes_hash(const unsigned char *p, size_t n) {
    uint64_t h1, h2;
    hash128(p, n, &h1, &h2);
    return h1;
}

static int32_t qtable_get(const QTable *T, const unsigned char *p, size_t n) {
    size_t h = (size_t)bytes_hash(p, n) & T->mask;
    while (T->slot[h]) {
        int32_t j = T->slot[h] - 1;
        if ((size_t)T->n[j] == n && memcmp(T->s[j], p, n) == 0) return j;
        h = (h + 1) & T->mask;
    }
    return -1;
}

/* the qrels' keys, shared by the parts (read only) */
typedef struct {
    const QTable *qt;
    Table t;
    const int32_t *qq;
    const uint64_t *qk1, *qk2;
    int64_t *gstart; /* the qrels' rows by query: gstart[q] .. gstart[q + 1] */
    uint64_t *gk1, *gk2;
    int32_t *grow;
} Keys;

typedef struct {
    const Keys *K;
    Buf bq, starts, score, match; /* per block: qrels index (i32), first row (i64, the part's); per row */
    Buf names, name_at;           /* the blocks' queries: bytes, and each one's offset (i64) */
    int64_t rows, blocks;
    int32_t cur_q;
    Buf cur; /* the current block's query */
    uint64_t *bk1, *bk2; /* the current block's docno keys */
    size_t bn, bcap;
    uint64_t *fk1, *fk2; /* the first block's, kept when it ends (the join checks them again) */
    size_t fn;
    int first_closed;
    int32_t *dslot; /* the duplicate check's table, reused across blocks */
    size_t dsize;
    int ordered;
    double first_score, last_score;
    unsigned char tag[1024];
    size_t tag_n;
    int tag_long;
    /* the part's range of the file and its outcome */
    const char *path;
    size_t lo, hi, max_line;
    int rc, err_no, nonempty;
} Part;

/* 0, -1 a docno twice among n keys, -2 out of memory */
static int dups(const uint64_t *k1, const uint64_t *k2, size_t n, int32_t **dslot, size_t *dsize) {
    if (n < 2) return 0;
    size_t size = 8;
    while (size < 2 * n) size <<= 1;
    if (size > *dsize) {
        free(*dslot);
        *dslot = malloc(size * sizeof **dslot);
        *dsize = *dslot ? size : 0;
        if (!*dslot) return -2;
    }
    int32_t *slot = *dslot;
    memset(slot, 0, size * sizeof *slot);
    for (size_t i = 0; i < n; i++) {
        size_t h = (size_t)fmix(k1[i]) & (size - 1);
        while (slot[h]) {
            size_t j = (size_t)slot[h] - 1;
            if (k1[j] == k1[i] && k2[j] == k2[i]) return -1;
            h = (h + 1) & (size - 1);
        }
        slot[h] = (int32_t)i + 1;
    }
    return 0;
}

static int end_block(Part *P) {
    int rc = dups(P->bk1, P->bk2, P->bn, &P->dslot, &P->dsize);
    if (rc) return rc;
    if (!P->first_closed) {
        P->first_closed = 1;
        P->fn = P->bn;
        P->fk1 = malloc(P->bn * 8 + 8);
        P->fk2 = malloc(P->bn * 8 + 8);
        if (!P->fk1 || !P->fk2) return -2;
        memcpy(P->fk1, P->bk1, P->bn * 8);
        memcpy(P->fk2, P->bk2, P->bn * 8);
    }
    return 0;
}

static int run_line(void *st, const unsigned char *p, size_t n) {
    Part *P = st;
    const Keys *K = P->K;
    const unsigned char *f[6];
    size_t fl[6];
    int nf = fields(p, n, f, fl, 6);
    if (nf == 0) return 0;
    if (nf < 6) return -1;
    double sc;
    if (parse_score((const char *)f[4], fl[4], &sc) < 0) return -1;
    int same = P->rows > 0 && fl[0] == P->cur.len && memcmp(f[0], P->cur.p, fl[0]) == 0;
    if (!same) { /* a new block */
        if (P->rows > 0) {
            int rc = end_block(P);
            if (rc) return rc;
        }
        P->bn = 0;
        P->cur.len = 0;
        int64_t at = (int64_t)P->names.len, start = P->rows;
        if (buf_put(&P->cur, f[0], fl[0]) < 0 || buf_put(&P->names, f[0], fl[0]) < 0 ||
            buf_put(&P->name_at, &at, 8) < 0)
            return -2;
        P->cur_q = qtable_get(K->qt, f[0], fl[0]);
        if (buf_put(&P->bq, &P->cur_q, 4) < 0 || buf_put(&P->starts, &start, 8) < 0) return -2;
        P->blocks++;
    } else if (!(sc < P->last_score)) {
        P->ordered = 0;
    }
    if (P->rows == 0) P->first_score = sc;
    P->last_score = sc;
    uint64_t h1, h2;
    hash128(f[2], fl[2], &h1, &h2);
    if (P->bn == P->bcap) {
        P->bcap = P->bcap ? 2 * P->bcap : 1024;
        uint64_t *a = realloc(P->bk1, P->bcap * 8), *b = a ? realloc(P->bk2, P->bcap * 8) : NULL;
        if (a) P->bk1 = a;
        if (b) P->bk2 = b;
        if (!a || !b) return -2;
    }
    P->bk1[P->bn] = h1;
    P->bk2[P->bn] = h2;
    P->bn++;
    int32_t m = -1;
    if (P->cur_q >= 0 && K->gstart[P->cur_q + 1] - K->gstart[P->cur_q] <= 64) {
        /* a query's judged keys lie together (sorted by query): a short scan, in cache */
        for (int64_t k = K->gstart[P->cur_q]; k < K->gstart[P->cur_q + 1]; k++)
            if (K->gk1[k] == h1 && K->gk2[k] == h2) { m = K->grow[k]; break; }
    } else if (P->cur_q >= 0) {
        size_t h = slot_of(P->cur_q, h1, K->t.mask);
        while (K->t.slot[h]) {
            int32_t j = K->t.slot[h] - 1;
            if (K->qk1[j] == h1 && K->qk2[j] == h2 && K->qq[j] == P->cur_q) { m = j; break; }
            h = (h + 1) & K->t.mask;
        }
    }
    if (buf_put(&P->score, &sc, 8) < 0 || buf_put(&P->match, &m, 4) < 0) return -2;
    P->rows++;
    size_t tn = fl[5];
    P->tag_long = tn > sizeof P->tag;
    if (!P->tag_long) { memcpy(P->tag, f[5], tn); P->tag_n = tn; }
    return 0;
}

/* a part's lines (`read_lines`), without the GIL: rc 0, -1 declined, -2 out of memory, -3 an OS
 * error (err_no) */
static void read_part(Part *P) {
    int rc = read_lines(P->path, P->lo, P->hi, P->max_line, run_line, P, &P->nonempty, &P->err_no);
    if (rc == -4) rc = -2;
    if (rc == 0 && P->rows > 0) rc = dups(P->bk1, P->bk2, P->bn, &P->dslot, &P->dsize); /* the last block */
    P->rc = rc;
}

static void *read_part_thread(void *arg) {
    read_part(arg);
    return NULL;
}

static void part_free(Part *P) {
    buf_free(&P->bq); buf_free(&P->starts); buf_free(&P->score); buf_free(&P->match);
    buf_free(&P->names); buf_free(&P->name_at); buf_free(&P->cur);
    free(P->bk1); free(P->bk2); free(P->fk1); free(P->fk2); free(P->dslot);
}

/* Where the run is cut into two parts: just after the first LF at or after the middle, when the
 * file has at least `min_split` bytes; 0: one part. */
static size_t split_at(const char *path, size_t min_split, size_t max_line) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    struct stat sb;
    size_t cut = 0;
    if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && (size_t)sb.st_size >= min_split && sb.st_size >= 2) {
        size_t size = (size_t)sb.st_size, off = size / 2;
        unsigned char buf[65536];
        while (off < size && off - size / 2 <= max_line + 1) {
            ssize_t got = pread(fd, buf, sizeof buf, (off_t)off);
            if (got <= 0) break;
            unsigned char *nl = memchr(buf, '\n', (size_t)got);
            if (nl) {
                cut = off + (size_t)(nl - buf) + 1;
                break;
            }
            off += (size_t)got;
        }
        if (cut >= size) cut = 0;
    }
    close(fd);
    return cut;
}

/* The parts joined in file order, with the GIL: the columns and the Python objects of the
 * one-pass reader. A part's first block that goes on with the previous part's last (one query
 * cut by the split) is one block: its docnos are checked for duplicates together and its scores
 * for order across the cut. Returns 0, -1 declined, -2 error set. */
typedef struct {
    PyObject *blist, *bq, *starts, *score, *match, *runid;
    int64_t rows;
    int ordered;
} Joined;

static int join_parts(Part *parts, int np, Joined *J) {
    int64_t rows = 0, blocks = 0;
    size_t nscore = 0, nmatch = 0;
    for (int i = 0; i < np; i++) {
        rows += parts[i].rows;
        blocks += parts[i].blocks;
        nscore += parts[i].score.len;
        nmatch += parts[i].match.len;
    }
    if (rows == 0) return -1;
    /* which parts go on with the previous part's last block (a part with rows has a block) */
    int cont[2] = {0, 0};
    int ordered = 1;
    Part *prev = NULL;
    for (int i = 0; i < np; i++) {
        Part *P = &parts[i];
        ordered &= P->ordered;
        if (P->rows == 0) continue;
        if (prev) {
            const int64_t *pa = (const int64_t *)prev->name_at.p, *qa = (const int64_t *)P->name_at.p;
            size_t pstart = (size_t)pa[prev->blocks - 1], plen = prev->names.len - pstart;
            size_t qlen = (P->blocks > 1 ? (size_t)qa[1] : P->names.len) - (size_t)qa[0];
            if (plen == qlen && memcmp(prev->names.p + pstart, P->names.p + qa[0], qlen) == 0) {
                cont[i] = 1;
                blocks--;
                if (!(P->first_score < prev->last_score)) ordered = 0;
                /* the block's docnos on both sides: prev's last block (its bk), P's first */
                const uint64_t *f1 = P->first_closed ? P->fk1 : P->bk1, *f2 = P->first_closed ? P->fk2 : P->bk2;
                size_t fn = P->first_closed ? P->fn : P->bn, n = prev->bn + fn;
                uint64_t *k1 = malloc(n * 8 + 8), *k2 = malloc(n * 8 + 8);
                int rc = (k1 && k2) ? 0 : -2;
                if (!rc) {
                    memcpy(k1, prev->bk1, prev->bn * 8);
                    memcpy(k2, prev->bk2, prev->bn * 8);
                    memcpy(k1 + prev->bn, f1, fn * 8);
                    memcpy(k2 + prev->bn, f2, fn * 8);
                    rc = dups(k1, k2, n, &P->dslot, &P->dsize);
                }
                free(k1);
                free(k2);
                if (rc == -2) { PyErr_NoMemory(); return -2; }
                if (rc) return -1;
            }
        }
        prev = P;
    }
    Part *last = prev;
    if (last->tag_long) return -1;
    PyObject *blist = PyList_New(0), *bmap = PyDict_New();
    PyObject *bq = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)(blocks * 4));
    PyObject *starts = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)((blocks + 1) * 8));
    PyObject *score = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)nscore);
    PyObject *match = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)nmatch);
    PyObject *runid = PyUnicode_DecodeUTF8((const char *)last->tag, (Py_ssize_t)last->tag_n, "strict");
    int rc = (blist && bmap && bq && starts && score && match && runid) ? 0 : -2;
    char *obq = rc ? NULL : PyByteArray_AS_STRING(bq), *ost = rc ? NULL : PyByteArray_AS_STRING(starts);
    char *osc = rc ? NULL : PyByteArray_AS_STRING(score), *oma = rc ? NULL : PyByteArray_AS_STRING(match);
    int64_t base = 0, b = 0;
    for (int i = 0; i < np && !rc; i++) {
        Part *P = &parts[i];
        const int64_t *at = (const int64_t *)P->name_at.p, *st = (const int64_t *)P->starts.p;
        const int32_t *q = (const int32_t *)P->bq.p;
        for (int64_t k = cont[i]; k < P->blocks && !rc; k++) {
            size_t s0 = (size_t)at[k], s1 = k + 1 < P->blocks ? (size_t)at[k + 1] : P->names.len;
            PyObject *s = PyUnicode_DecodeUTF8(P->names.p + s0, (Py_ssize_t)(s1 - s0), "strict");
            if (!s) { rc = -2; break; }
            int has = PyDict_Contains(bmap, s);
            if (has) { Py_DECREF(s); rc = has < 0 ? -2 : -1; break; } /* a query in two blocks */
            if (PyDict_SetItem(bmap, s, Py_None) < 0 || PyList_Append(blist, s) < 0) { Py_DECREF(s); rc = -2; break; }
            Py_DECREF(s);
            int64_t start = st[k] + base;
            memcpy(obq + b * 4, &q[k], 4);
            memcpy(ost + b * 8, &start, 8);
            b++;
        }
        if (rc) break;
        memcpy(osc, P->score.p, P->score.len);
        memcpy(oma, P->match.p, P->match.len);
        osc += P->score.len;
        oma += P->match.len;
        base += P->rows;
    }
    if (!rc) memcpy(ost + b * 8, &rows, 8);
    Py_XDECREF(bmap);
    if (rc) {
        Py_XDECREF(blist); Py_XDECREF(bq); Py_XDECREF(starts); Py_XDECREF(score); Py_XDECREF(match); Py_XDECREF(runid);
        return rc;
    }
    J->blist = blist; J->bq = bq; J->starts = starts; J->score = score; J->match = match; J->runid = runid;
    J->rows = rows;
    J->ordered = ordered;
    return 0;
}

/* ------------------------------------------------------------------ entry */
static PyObject *declined(void) { Py_RETURN_NONE; }

static PyObject *scan(PyObject *self, PyObject *args) {
    PyObject *qpath_o, *rpath_o;
    Py_ssize_t max_line, min_split = (Py_ssize_t)1 << 24;
    if (!PyArg_ParseTuple(args, "O&O&n|n", PyUnicode_FSConverter, &qpath_o, PyUnicode_FSConverter, &rpath_o, &max_line,
                          &min_split))
        return NULL;
    PyObject *result = NULL;
    Qrels Q;
    Keys K;
    QTable QT;
    Part parts[2];
    memset(&Q, 0, sizeof Q);
    memset(&K, 0, sizeof K);
    memset(&QT, 0, sizeof QT);
    memset(parts, 0, sizeof parts);
    Q.qmap = PyDict_New();
    Q.qlist = PyList_New(0);
    if (!Q.qmap || !Q.qlist) goto done;
    if (col_init(&Q.q, 1 << 16) || col_init(&Q.rel, 1 << 17) || col_init(&Q.k1, 1 << 17) || col_init(&Q.k2, 1 << 17))
        goto done;
    int nonempty, rc, err_no = 0;
    const char *qpath = PyBytes_AS_STRING(qpath_o);
    rc = read_lines(qpath, 0, SIZE_MAX, (size_t)max_line, qrels_line, &Q, &nonempty, &err_no);
    if (rc == -3) { errno = err_no; PyErr_SetFromErrnoWithFilename(PyExc_OSError, qpath); goto done; }
    if (rc == -4) { PyErr_NoMemory(); goto done; }
    if (rc == -2) goto done; /* qrels_line's error, set */
    if (rc == -1 || !nonempty || Q.rows == 0) { result = declined(); goto done; }
    /* the qrels' keys: a table, duplicates declined */
    size_t size = 16;
    while (size < 2 * (size_t)Q.rows) size <<= 1;
    K.t.slot = calloc(size, sizeof *K.t.slot);
    if (!K.t.slot) { PyErr_NoMemory(); goto done; }
    K.t.mask = size - 1;
    K.qq = (const int32_t *)PyByteArray_AS_STRING(Q.q.ba);
    K.qk1 = (const uint64_t *)PyByteArray_AS_STRING(Q.k1.ba);
    K.qk2 = (const uint64_t *)PyByteArray_AS_STRING(Q.k2.ba);
    for (Py_ssize_t i = 0; i < Q.rows; i++) {
        size_t h = slot_of(K.qq[i], K.qk1[i], K.t.mask);
        while (K.t.slot[h]) {
            int32_t j = K.t.slot[h] - 1;
            if (K.qk1[j] == K.qk1[i] && K.qk2[j] == K.qk2[i] && K.qq[j] == K.qq[i]) {
                result = declined(); /* a duplicate judged docno: the general reader names it */
                goto done;
            }
            h = (h + 1) & K.t.mask;
        }
        K.t.slot[h] = (int32_t)i + 1;
    }
    /* the qrels' keys grouped by query (a counting sort), for the run's lookups */
    Py_ssize_t nq = PyList_GET_SIZE(Q.qlist);
    K.gstart = calloc((size_t)nq + 2, sizeof *K.gstart);
    K.gk1 = malloc((size_t)Q.rows * 8);
    K.gk2 = malloc((size_t)Q.rows * 8);
    K.grow = malloc((size_t)Q.rows * 4);
    if (!K.gstart || !K.gk1 || !K.gk2 || !K.grow) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < Q.rows; i++) K.gstart[K.qq[i] + 2]++;
    for (Py_ssize_t q = 0; q < nq; q++) K.gstart[q + 2] += K.gstart[q + 1];
    for (Py_ssize_t i = 0; i < Q.rows; i++) {
        int64_t k = K.gstart[K.qq[i] + 1]++;
        K.gk1[k] = K.qk1[i];
        K.gk2[k] = K.qk2[i];
        K.grow[k] = (int32_t)i;
    }
    /* the qrels' queries as bytes, for the parts (which hold no GIL) */
    size = 16;
    while (size < 2 * (size_t)nq) size <<= 1;
    QT.slot = calloc(size, sizeof *QT.slot);
    QT.s = malloc(((size_t)nq + 1) * sizeof *QT.s);
    QT.n = malloc(((size_t)nq + 1) * sizeof *QT.n);
    if (!QT.slot || !QT.s || !QT.n) { PyErr_NoMemory(); goto done; }
    QT.mask = size - 1;
    for (Py_ssize_t i = 0; i < nq; i++) {
        QT.s[i] = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(Q.qlist, i), &QT.n[i]);
        if (!QT.s[i]) goto done;
        size_t h = (size_t)bytes_hash((const unsigned char *)QT.s[i], (size_t)QT.n[i]) & QT.mask;
        while (QT.slot[h]) h = (h + 1) & QT.mask;
        QT.slot[h] = (int32_t)i + 1;
    }
    K.qt = &QT;
    /* the run: two parts read at once on a big file, without the GIL */
    const char *rpath = PyBytes_AS_STRING(rpath_o);
    size_t cut = split_at(rpath, (size_t)(min_split < 0 ? 0 : min_split), (size_t)max_line);
    int np = cut ? 2 : 1;
    for (int i = 0; i < np; i++) {
        parts[i].K = &K;
        parts[i].ordered = 1;
        parts[i].path = rpath;
        parts[i].max_line = (size_t)max_line;
        parts[i].lo = i == 0 ? 0 : cut;
        parts[i].hi = i == 0 && cut ? cut : SIZE_MAX;
    }
    int threaded = 0;
    pthread_t th;
    Py_BEGIN_ALLOW_THREADS
    if (np == 2 && pthread_create(&th, NULL, read_part_thread, &parts[1]) == 0) threaded = 1;
    read_part(&parts[0]);
    if (threaded) pthread_join(th, NULL);
    else if (np == 2) read_part(&parts[1]);
    Py_END_ALLOW_THREADS
    int any = 0;
    for (int i = 0; i < np; i++) any |= parts[i].nonempty;
    for (int i = 0; i < np; i++) { /* the first part's outcome first, as one pass would meet it */
        if (parts[i].rc == -3) { errno = parts[i].err_no; PyErr_SetFromErrnoWithFilename(PyExc_OSError, rpath); goto done; }
        if (parts[i].rc == -2) { PyErr_NoMemory(); goto done; }
        if (parts[i].rc == -1) { result = declined(); goto done; }
    }
    if (!any) { result = declined(); goto done; }
    Joined J;
    memset(&J, 0, sizeof J);
    rc = join_parts(parts, np, &J);
    if (rc == -2) goto done;
    if (rc == -1) { result = declined(); goto done; }
    PyObject *c0 = col_finish(&Q.q), *c1 = col_finish(&Q.rel);
    if (c0 && c1)
        result = Py_BuildValue("(OOOOOOOONO)", Q.qlist, c0, c1, J.blist, J.bq, J.starts, J.score, J.match, J.runid,
                               J.ordered ? Py_True : Py_False);
    else
        Py_DECREF(J.runid);
    Py_XDECREF(c0); Py_XDECREF(c1);
    Py_DECREF(J.blist); Py_DECREF(J.bq); Py_DECREF(J.starts); Py_DECREF(J.score); Py_DECREF(J.match);
done:
    free(K.t.slot);
    free(K.gstart);
    free(K.gk1);
    free(K.gk2);
    free(K.grow);
    free(QT.slot);
    free(QT.s);
    free(QT.n);
    for (int i = 0; i < 2; i++) part_free(&parts[i]);
    col_free(&Q.q); col_free(&Q.rel); col_free(&Q.k1); col_free(&Q.k2);
    Py_XDECREF(Q.qmap);
    Py_XDECREF(Q.qlist);
    Py_DECREF(qpath_o);
    Py_DECREF(rpath_o);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(qrels_path, run_path, max_line, min_split=2**24) -> columns, or None (the general reader)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_trecscan", "TREC qrels + run reader (issue 19)", -1,
                                    methods};

PyMODINIT_FUNC PyInit__trecscan(void) {
    init_cls();
    c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
    if (!c_locale) return PyErr_NoMemory();
    return PyModule_Create(&module);
}
