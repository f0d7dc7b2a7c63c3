/* Paged decode attention for CPUs: one query token per sequence against its cached keys, read in
   place through the block table.

   The torch twin gathers every sequence's pages into a padded (B, kvh, L, hd) copy before SDPA,
   so each decode step writes and re-reads the whole visible cache once more; here each (sequence,
   kv head) task reads its keys and values once, for all the query heads that share them (GQA).
   Tasks run on the OpenMP pool torch already loaded (same libgomp). Built with -ffast-math: every
   score is finite (only visible keys are visited), and the exps then vectorise. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "bf16.h"

#define MAX_GROUP 16 /* query heads per kv head; with MAX_HEAD_DIM, 32 KiB of stack per task */
#define MAX_HEAD_DIM 256

/* q, out (B, H, hd) contiguous; caches (pages, bs, kvh, hd) with page stride `page_stride` elements;
   tables (B, table_stride) int32 page ids; ctx_lens (B,) int32 keys visible to each query. */
#define PAGED_DECODE(NAME, T, LOAD, STORE)                                                          \
    static int NAME(const T *q, const T *k_cache, const T *v_cache, int64_t page_stride,                   \
             const int32_t *tables, int64_t table_stride, const int32_t *ctx_lens, T *out,          \
             int64_t B, int64_t H, int64_t kvh, int64_t hd, int64_t bs, float scale,                \
             int64_t num_threads) {                                                                 \
        const int64_t G = H / kvh;                                                                  \
        if (G > MAX_GROUP || hd > MAX_HEAD_DIM || G * kvh != H) return -1;                          \
        int failed = 0;                                                                             \
        _Pragma("omp parallel for collapse(2) schedule(dynamic, 1) num_threads(num_threads)")       \
        for (int64_t b = 0; b < B; b++) {                                                           \
            for (int64_t g = 0; g < kvh; g++) {                                                     \
                const int64_t L = ctx_lens[b];                                                      \
                float *s = malloc(sizeof(float) * (size_t)(G * (L > 0 ? L : 1)));                   \
                if (s == NULL) { failed = 1; continue; }                                            \
                float qf[MAX_GROUP][MAX_HEAD_DIM], acc[MAX_GROUP][MAX_HEAD_DIM];                    \
                for (int64_t i = 0; i < G; i++)                                                     \
                    for (int64_t d = 0; d < hd; d++) {                                              \
                        qf[i][d] = LOAD(q[(b * H + g * G + i) * hd + d]) * scale;                   \
                        acc[i][d] = 0.f;                                                            \
                    }                                                                               \
                const int32_t *table = tables + b * table_stride;                                   \
                for (int64_t t0 = 0; t0 < L; t0 += bs) { /* a page at a time: no division per key */ \
                    const T *kp = k_cache + table[t0 / bs] * page_stride + g * hd;                  \
                    for (int64_t t = t0; t < L && t < t0 + bs; t++) {                               \
                        const T *k = kp + (t - t0) * kvh * hd;                                      \
                        for (int64_t i = 0; i < G; i++) {                                           \
                            float lanes[16] = {0.f}; /* 16 partial sums: two independent chains */  \
                            int64_t d = 0;                                                          \
                            for (; d + 16 <= hd; d += 16)                                           \
                                for (int j = 0; j < 16; j++) lanes[j] += qf[i][d + j] * LOAD(k[d + j]); \
                            float dot = 0.f;                                                        \
                            for (; d < hd; d++) dot += qf[i][d] * LOAD(k[d]);                       \
                            for (int j = 0; j < 16; j++) dot += lanes[j];                           \
                            s[i * L + t] = dot;                                                     \
                        }                                                                           \
                    }                                                                               \
                }                                                                                   \
                float inv[MAX_GROUP];                                                               \
                for (int64_t i = 0; i < G; i++) {                                                   \
                    float *si = s + i * L, m = si[0], sum = 0.f;                                    \
                    for (int64_t t = 1; t < L; t++) m = si[t] > m ? si[t] : m;                      \
                    for (int64_t t = 0; t < L; t++) {                                               \
                        si[t] = expf(si[t] - m);                                                    \
                        sum += si[t];                                                               \
                    }                                                                               \
                    inv[i] = L > 0 ? 1.f / sum : 0.f;                                               \
                }                                                                                   \
                for (int64_t t0 = 0; t0 < L; t0 += bs) {                                            \
                    const T *vp = v_cache + table[t0 / bs] * page_stride + g * hd;                  \
                    for (int64_t t = t0; t < L && t < t0 + bs; t++) {                               \
                        const T *v = vp + (t - t0) * kvh * hd;                                      \
                        for (int64_t i = 0; i < G; i++) {                                           \
                            const float p = s[i * L + t];                                           \
                            for (int64_t d = 0; d < hd; d++) acc[i][d] += p * LOAD(v[d]);           \
                        }                                                                           \
                    }                                                                               \
                }                                                                                   \
                for (int64_t i = 0; i < G; i++)                                                     \
                    for (int64_t d = 0; d < hd; d++)                                                \
                        out[(b * H + g * G + i) * hd + d] = STORE(acc[i][d] * inv[i]);              \
                free(s);                                                                            \
            }                                                                                       \
        }                                                                                           \
        return failed ? -2 : 0;                                                                     \
    }

#define ID(v) (v)

PAGED_DECODE(decode_any_f32, float, ID, ID)
PAGED_DECODE(decode_any_bf16, uint16_t, bf16_to_f32, f32_to_bf16)

/* Paged prefill: causal attention of packed query chunks against their sequences' keys (a cached
   prefix, then the chunk itself), read in place through the block tables.

   The torch twin gathers each sequence's pages into a contiguous copy and runs SDPA per sequence.
   Here a task is (sequence, kv head, tile of QUERY_TILE query positions): its rows are the tile's
   positions times the kv head's G query heads, so each key chunk is widened to fp32 once per tile
   and shared by all of them. Keys go COLS at a time through an online softmax (flash-attention
   style, fp32). The tile's queries are transposed once, (hd, rows), so scores come out (keys, rows):
   keys are widened as plain rows, and the softmax runs down the rows in vectors, with no horizontal
   max or sum. Both products are register-blocked outer products on GCC vector types, which the
   compiler maps onto AVX2 or AVX-512. Masked scores are NEG_BIG, not -inf (-ffast-math assumes
   finite values); every query sees key 0, in the first chunk, so a row's running max is a real
   score from its first chunk on. */
#define COLS 16       /* keys per chunk, and the width of the column blocks of P @ V */
#define KEYS 8        /* keys per block of K @ Q^T: KEYS accumulators of one register */
#define QUERY_TILE 16 /* query positions per task */
#define NEG_BIG (-1e30f)
#if defined(__AVX512F__)
#define VW 16  /* floats per register */
#define ROWS 8 /* ROWS x COLS block of P @ V: 8 zmm accumulators */
#else
#define VW 8
#define ROWS 4 /* 8 ymm accumulators */
#endif
#define NV (COLS / VW)

typedef float vec __attribute__((vector_size(VW * sizeof(float)))); /* one register, aligned */

struct prefill {
    const void *q, *k, *v; /* q (Tq, H, hd); caches (pages, bs, kvh, hd), page stride page_stride */
    void *out;             /* (Tq, H, hd) */
    int bf16;
    int64_t page_stride, table_stride, H, kvh, G, hd, hdp, bs, max_rows;
    const int32_t *tables, *cu, *ctx; /* (S, table_stride), (S + 1,), (S,) */
    float scale;
};

static inline void widen(const void *src, int bf16, float *dst, int64_t n) {
    if (bf16)
        for (int64_t i = 0; i < n; i++) dst[i] = bf16_to_f32(((const uint16_t *)src)[i]);
    else
        for (int64_t i = 0; i < n; i++) dst[i] = ((const float *)src)[i];
}

/* st (COLS, R) = kf (COLS, hdp) @ qt (hdp, R), KEYS keys x VW rows at a time. */
static void chunk_scores(const float *qt, const float *kf, float *st, int64_t R, int64_t hdp) {
    for (int64_t r0 = 0; r0 < R; r0 += VW)
        for (int64_t j0 = 0; j0 < COLS; j0 += KEYS) {
            vec a[KEYS];
            for (int i = 0; i < KEYS; i++) a[i] = (vec){0.f};
            for (int64_t d = 0; d < hdp; d++) {
                const vec q = *(const vec *)(qt + d * R + r0);
                for (int i = 0; i < KEYS; i++) a[i] += kf[(j0 + i) * hdp + d] * q;
            }
            for (int i = 0; i < KEYS; i++) *(vec *)(st + (j0 + i) * R + r0) = a[i];
        }
}

/* acc (R, hdp) = acc * alpha[:, None] + st.T (R, COLS) @ vf (COLS, hdp), ROWS x COLS blocks. */
static void chunk_values(float *acc, const float *alpha, const float *st, const float *vf, int64_t R,
                         int64_t hdp) {
    for (int64_t r0 = 0; r0 < R; r0 += ROWS)
        for (int64_t d0 = 0; d0 < hdp; d0 += COLS) {
            vec a[ROWS][NV];
            for (int i = 0; i < ROWS; i++)
                for (int c = 0; c < NV; c++) a[i][c] = *(vec *)(acc + (r0 + i) * hdp + d0 + c * VW) * alpha[r0 + i];
            for (int64_t j = 0; j < COLS; j++) {
                vec v[NV];
                for (int c = 0; c < NV; c++) v[c] = *(const vec *)(vf + j * hdp + d0 + c * VW);
                for (int i = 0; i < ROWS; i++)
                    for (int c = 0; c < NV; c++) a[i][c] += st[j * R + r0 + i] * v[c];
            }
            for (int i = 0; i < ROWS; i++)
                for (int c = 0; c < NV; c++) *(vec *)(acc + (r0 + i) * hdp + d0 + c * VW) = a[i][c];
        }
}

/* The online softmax over one chunk's scores st (COLS, R), in place: running max m, sum l, and the
   factor alpha that rescales what acc holds. Every loop runs down the rows: vectorised. */
static void chunk_softmax(float *st, float *m, float *l, float *alpha, float *mx, int64_t R) {
    for (int64_t r = 0; r < R; r++) mx[r] = m[r];
    for (int64_t j = 0; j < COLS; j++)
        for (int64_t r = 0; r < R; r++) mx[r] = st[j * R + r] > mx[r] ? st[j * R + r] : mx[r];
    for (int64_t r = 0; r < R; r++) {
        alpha[r] = expf(m[r] - mx[r]);
        l[r] *= alpha[r];
        m[r] = mx[r];
    }
    for (int64_t j = 0; j < COLS; j++)
        for (int64_t r = 0; r < R; r++) {
            st[j * R + r] = expf(st[j * R + r] - m[r]);
            l[r] += st[j * R + r];
        }
}

/* Query positions [i0, i0 + QUERY_TILE) of sequence b's chunk, for the query heads of kv head g.
   buf: a thread's scratch, 64-byte aligned. */
static void prefill_tile(const struct prefill *a, float *buf, int64_t b, int64_t g, int64_t i0) {
    const int64_t G = a->G, hd = a->hd, hdp = a->hdp, M = a->max_rows, esz = a->bf16 ? 2 : 4;
    const int64_t qlen = a->cu[b + 1] - a->cu[b], nq = qlen - i0 < QUERY_TILE ? qlen - i0 : QUERY_TILE;
    const int64_t first = a->ctx[b] - qlen + i0; /* position of the tile's first query */
    const int64_t keys = first + nq;              /* keys its last query sees */
    const int64_t rows = nq * G, R = (rows + VW - 1) / VW * VW;
    float *qt = buf, *acc = qt + hdp * M, *st = acc + M * hdp, *kf = st + COLS * M, *vf = kf + COLS * hdp;
    float *m = vf + COLS * hdp, *l = m + M, *alpha = l + M, *mx = alpha + M;
    int32_t *pos = (int32_t *)(mx + M); /* each row's query position; pad rows copy the last one */
    for (int64_t i = 0; i < hdp * R; i++) qt[i] = acc[i] = 0.f;
    for (int64_t i = 0; i < COLS * hdp; i++) kf[i] = vf[i] = 0.f; /* pad columns stay 0 */
    for (int64_t r = 0; r < R; r++) { /* row r = query i0 + r / G, head g * G + r % G */
        if (r < rows) {
            const int64_t tok = a->cu[b] + i0 + r / G, head = g * G + r % G;
            const void *q = (const char *)a->q + (tok * a->H + head) * hd * esz;
            float qrow[MAX_HEAD_DIM];
            widen(q, a->bf16, qrow, hd);
            for (int64_t d = 0; d < hd; d++) qt[d * R + r] = qrow[d] * a->scale;
        }
        pos[r] = (int32_t)(first + (r < rows ? r / G : nq - 1));
        m[r] = NEG_BIG;
        l[r] = 0.f;
    }
    const int32_t *table = a->tables + b * a->table_stride;
    for (int64_t t0 = 0; t0 < keys; t0 += COLS) {
        const int64_t n = keys - t0 < COLS ? keys - t0 : COLS;
        for (int64_t j = 0; j < n; j++) {
            const int64_t t = t0 + j;
            const int64_t off = (table[t / a->bs] * a->page_stride + (t % a->bs) * a->kvh * hd + g * hd) * esz;
            widen((const char *)a->k + off, a->bf16, kf + j * hdp, hd);
            widen((const char *)a->v + off, a->bf16, vf + j * hdp, hd);
        }
        for (int64_t j = n; j < COLS; j++) /* the last chunk's missing keys: masked, and 0 * 0 in values */
            for (int64_t d = 0; d < hd; d++) kf[j * hdp + d] = vf[j * hdp + d] = 0.f;
        chunk_scores(qt, kf, st, R, hdp);
        if (t0 + COLS - 1 > first) /* the chunk reaches past the first query: causal mask */
            for (int64_t j = 0; j < COLS; j++)
                for (int64_t r = 0; r < R; r++)
                    if (t0 + j > pos[r]) st[j * R + r] = NEG_BIG;
        chunk_softmax(st, m, l, alpha, mx, R);
        chunk_values(acc, alpha, st, vf, R, hdp);
    }
    for (int64_t r = 0; r < rows; r++) {
        const int64_t tok = a->cu[b] + i0 + r / G, head = g * G + r % G, o = (tok * a->H + head) * hd;
        const float inv = 1.f / l[r];
        for (int64_t d = 0; d < hd; d++) {
            if (a->bf16)
                ((uint16_t *)a->out)[o + d] = f32_to_bf16(acc[r * hdp + d] * inv);
            else
                ((float *)a->out)[o + d] = acc[r * hdp + d] * inv;
        }
    }
}

/* 0, or why not: -1 shapes out of range, -2 out of memory, -3 cu_seqlens / context_lens inconsistent,
   -4 a sequence's keys reach past its block table or onto a page that does not exist. */
static int paged_prefill(const void *q, const void *k_cache, const void *v_cache, int64_t page_stride,
                         int64_t num_pages, const int32_t *tables, int64_t table_stride, int64_t max_blocks,
                         const int32_t *cu_seqlens, const int32_t *ctx_lens, void *out, int64_t Tq, int64_t S,
                         int64_t H, int64_t kvh, int64_t hd, int64_t bs, float scale, int64_t num_threads,
                         int bf16) {
    if (kvh <= 0 || hd <= 0 || bs <= 0 || H % kvh || H / kvh > MAX_GROUP || hd > MAX_HEAD_DIM) return -1;
    const int64_t G = H / kvh, hdp = (hd + COLS - 1) / COLS * COLS, max_rows = (QUERY_TILE * G + VW - 1) / VW * VW;
    if (cu_seqlens[0] != 0 || cu_seqlens[S] != Tq) return -3;
    int64_t *first_task = malloc(sizeof(int64_t) * (size_t)(S + 1)); /* tasks of sequence b start here */
    if (first_task == NULL) return -2;
    first_task[0] = 0;
    for (int64_t b = 0; b < S; b++) {
        const int64_t qlen = cu_seqlens[b + 1] - cu_seqlens[b], blocks = (ctx_lens[b] + bs - 1) / bs;
        int bad = qlen < 0 || qlen > ctx_lens[b] ? -3 : blocks > max_blocks ? -4 : 0;
        for (int64_t p = 0; p < blocks && !bad; p++)
            bad = tables[b * table_stride + p] < 0 || tables[b * table_stride + p] >= num_pages ? -4 : 0;
        if (bad) {
            free(first_task);
            return bad;
        }
        first_task[b + 1] = first_task[b] + (qlen + QUERY_TILE - 1) / QUERY_TILE * kvh;
    }
    const struct prefill a = {q, k_cache, v_cache, out, bf16, page_stride, table_stride, H, kvh, G, hd,
                              hdp, bs, max_rows, tables, cu_seqlens, ctx_lens, scale};
    const int64_t tasks = first_task[S];
    const int64_t M = max_rows; /* qt, acc; st; kf, vf; m, l, alpha, mx, pos */
    const size_t scratch = sizeof(float) * (size_t)(2 * M * hdp + M * COLS + 2 * hdp * COLS + 5 * M);
    int failed = 0;
    _Pragma("omp parallel num_threads(num_threads) if (tasks > 1)") {
        float *buf = aligned_alloc(64, (scratch + 63) / 64 * 64);
        if (buf == NULL) {
            _Pragma("omp atomic write") failed = 1;
        }
        _Pragma("omp for schedule(dynamic, 1)") for (int64_t task = 0; task < tasks; task++) {
            if (buf == NULL) continue;
            int64_t lo = 0, hi = S; /* the sequence b with first_task[b] <= task < first_task[b + 1] */
            while (hi - lo > 1) {
                const int64_t mid = (lo + hi) / 2;
                if (first_task[mid] <= task) lo = mid; else hi = mid;
            }
            const int64_t local = task - first_task[lo], tiles = (first_task[lo + 1] - first_task[lo]) / kvh;
            /* the last tiles see the most keys: hand them out first */
            prefill_tile(&a, buf, lo, local % kvh, (tiles - 1 - local / kvh) * QUERY_TILE);
        }
        free(buf);
    }
    free(first_task);
    return failed ? -2 : 0;
}

/* q, out (Tq, H, hd) contiguous; caches (num_pages, bs, kvh, hd) with page stride `page_stride`
   elements; tables (S, table_stride) int32 page ids, max_blocks of them per sequence; cu_seqlens
   (S + 1,) and ctx_lens (S,) int32. */
int paged_prefill_f32(const float *q, const float *k_cache, const float *v_cache, int64_t page_stride,
                      int64_t num_pages, const int32_t *tables, int64_t table_stride, int64_t max_blocks,
                      const int32_t *cu_seqlens, const int32_t *ctx_lens, float *out, int64_t Tq, int64_t S,
                      int64_t H, int64_t kvh, int64_t hd, int64_t bs, float scale, int64_t num_threads) {
    return paged_prefill(q, k_cache, v_cache, page_stride, num_pages, tables, table_stride, max_blocks, cu_seqlens,
                         ctx_lens, out, Tq, S, H, kvh, hd, bs, scale, num_threads, 0);
}

int paged_prefill_bf16(const uint16_t *q, const uint16_t *k_cache, const uint16_t *v_cache, int64_t page_stride,
                       int64_t num_pages, const int32_t *tables, int64_t table_stride, int64_t max_blocks,
                       const int32_t *cu_seqlens, const int32_t *ctx_lens, uint16_t *out, int64_t Tq, int64_t S,
                       int64_t H, int64_t kvh, int64_t hd, int64_t bs, float scale, int64_t num_threads) {
    return paged_prefill(q, k_cache, v_cache, page_stride, num_pages, tables, table_stride, max_blocks, cu_seqlens,
                         ctx_lens, out, Tq, S, H, kvh, hd, bs, scale, num_threads, 1);
}

/* ---- decode, vector path: head dims of 64 or 128 ------------------------------------------------ */
/* One task per (sequence, kv head) as above, but each query head's q and accumulator stay in registers
   (NVH vectors) while the task walks the pages, a chunk of keys at a time with an online softmax: no
   scores buffer, no per-key loads and stores of the accumulator. K and V chunks are read once from memory
   for the first query head of the group and from L1 for the others; the next page's rows are prefetched
   while a page is read (pages lie anywhere in the pool, beyond the prefetchers' reach: 30 layers of 64
   sequences x 250 keys took 36-38 ms without, 27.5 ms with, on the 2-core host). */
#define DEC_KEYS 64 /* keys per chunk: scores on the stack, exps vectorised over them */

static inline vec loadv_f32(const float *p) {
    vec v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline vec loadv_bf16(const uint16_t *p) {
    vec v;
    for (int j = 0; j < VW; j++) v[j] = bf16_to_f32(p[j]);
    return v;
}

static inline float hsum(vec v) { /* -ffast-math: the compiler reduces it as a tree */
    float s = 0.f;
    for (int j = 0; j < VW; j++) s += v[j];
    return s;
}

#define DECODE_HEADS(NAME, T, LOADV, STORE, NVH, HP)                                               \
    static void NAME(const T *q, const T *k_cache, const T *v_cache, int64_t page_stride,           \
                     const int32_t *table, int64_t L, T *out, int64_t kvh, int64_t bs, float scale) { \
        enum { HD = NVH * VW };                                                                     \
        vec qv[HP][NVH], acc[HP][NVH];                                                              \
        float m[HP], l[HP], s[HP][DEC_KEYS];                                                        \
        for (int h = 0; h < HP; h++) {                                                              \
            m[h] = NEG_BIG, l[h] = 0.f;                                                             \
            for (int v = 0; v < NVH; v++) qv[h][v] = LOADV(q + h * HD + v * VW) * scale, acc[h][v] = (vec){0}; \
        }                                                                                           \
        for (int64_t t0 = 0; t0 < L; t0 += bs) {                                                    \
            const int64_t page = (int64_t)table[t0 / bs] * page_stride, end = L < t0 + bs ? L : t0 + bs; \
            if (t0 + bs < L) { /* the next page's rows of this head: pages lie anywhere in the pool */ \
                const int64_t next = (int64_t)table[t0 / bs + 1] * page_stride;                     \
                const int64_t n = L - t0 - bs < bs ? L - t0 - bs : bs;                              \
                for (int64_t t = 0; t < n; t++)                                                     \
                    for (int64_t c = 0; c < HD * (int64_t)sizeof(T); c += 64) {                     \
                        __builtin_prefetch((const char *)(k_cache + next + t * kvh * HD) + c);      \
                        __builtin_prefetch((const char *)(v_cache + next + t * kvh * HD) + c);      \
                    }                                                                               \
            }                                                                                       \
            for (int64_t c0 = t0; c0 < end; c0 += DEC_KEYS) {                                       \
                const int64_t n = end - c0 < DEC_KEYS ? end - c0 : DEC_KEYS;                        \
                const T *kp = k_cache + page + (c0 - t0) * kvh * HD, *vp = v_cache + page + (c0 - t0) * kvh * HD; \
                float mc[HP];                                                                       \
                for (int h = 0; h < HP; h++) mc[h] = m[h];                                          \
                for (int64_t t = 0; t < n; t++) {                                                   \
                    vec kv[NVH], d[HP];                                                             \
                    for (int v = 0; v < NVH; v++) kv[v] = LOADV(kp + t * kvh * HD + v * VW);        \
                    for (int h = 0; h < HP; h++) {                                                  \
                        d[h] = qv[h][0] * kv[0];                                                    \
                        for (int v = 1; v < NVH; v++) d[h] += qv[h][v] * kv[v];                     \
                    }                                                                               \
                    for (int h = 0; h < HP; h++) {                                                  \
                        s[h][t] = hsum(d[h]);                                                       \
                        mc[h] = s[h][t] > mc[h] ? s[h][t] : mc[h];                                  \
                    }                                                                               \
                }                                                                                   \
                for (int h = 0; h < HP; h++) {                                                      \
                    const float alpha = expf(m[h] - mc[h]);                                         \
                    float sum = 0.f;                                                                \
                    for (int64_t t = 0; t < n; t++) sum += s[h][t] = expf(s[h][t] - mc[h]);         \
                    l[h] = l[h] * alpha + sum;                                                      \
                    m[h] = mc[h];                                                                   \
                    for (int v = 0; v < NVH; v++) acc[h][v] *= alpha;                               \
                }                                                                                   \
                for (int64_t t = 0; t < n; t++)                                                     \
                    for (int v = 0; v < NVH; v++) {                                                 \
                        const vec vv = LOADV(vp + t * kvh * HD + v * VW);                           \
                        for (int h = 0; h < HP; h++) acc[h][v] += s[h][t] * vv;                     \
                    }                                                                               \
            }                                                                                       \
        }                                                                                           \
        for (int h = 0; h < HP; h++) {                                                              \
            const float inv = L > 0 ? 1.f / l[h] : 0.f;                                             \
            for (int v = 0; v < NVH; v++)                                                           \
                for (int j = 0; j < VW; j++) out[h * HD + v * VW + j] = STORE(acc[h][v][j] * inv);  \
        }                                                                                           \
    }

/* heads of a group in passes of HP (sharing each key and value load), the rest one at a time */
DECODE_HEADS(heads64x3_f32, float, loadv_f32, ID, 64 / VW, 3)
DECODE_HEADS(heads64x1_f32, float, loadv_f32, ID, 64 / VW, 1)
DECODE_HEADS(heads128x2_f32, float, loadv_f32, ID, 128 / VW, 2)
DECODE_HEADS(heads128x1_f32, float, loadv_f32, ID, 128 / VW, 1)
DECODE_HEADS(heads64x3_bf16, uint16_t, loadv_bf16, f32_to_bf16, 64 / VW, 3)
DECODE_HEADS(heads64x1_bf16, uint16_t, loadv_bf16, f32_to_bf16, 64 / VW, 1)
DECODE_HEADS(heads128x2_bf16, uint16_t, loadv_bf16, f32_to_bf16, 128 / VW, 2)
DECODE_HEADS(heads128x1_bf16, uint16_t, loadv_bf16, f32_to_bf16, 128 / VW, 1)

#define DECODE_ENTRY(NAME, T, ANY, SFX)                                                              \
    int NAME(const T *q, const T *k_cache, const T *v_cache, int64_t page_stride,                   \
             const int32_t *tables, int64_t table_stride, const int32_t *ctx_lens, T *out,          \
             int64_t B, int64_t H, int64_t kvh, int64_t hd, int64_t bs, float scale,                \
             int64_t num_threads) {                                                                 \
        if ((hd != 64 && hd != 128) || kvh <= 0 || H % kvh)                                         \
            return ANY(q, k_cache, v_cache, page_stride, tables, table_stride, ctx_lens, out, B, H, kvh, hd, bs, \
                       scale, num_threads);                                                         \
        const int64_t G = H / kvh, HP = hd == 64 ? 3 : 2;                                           \
        _Pragma("omp parallel for collapse(2) schedule(dynamic, 1) num_threads(num_threads)")       \
        for (int64_t b = 0; b < B; b++)                                                             \
            for (int64_t g = 0; g < kvh; g++)                                                       \
                for (int64_t i = 0; i < G;) {                                                       \
                    const int64_t at = (b * H + g * G + i) * hd, L = ctx_lens[b];                   \
                    const T *k = k_cache + g * hd, *v = v_cache + g * hd, *qi = q + at;             \
                    const int32_t *table = tables + b * table_stride;                               \
                    const int pass = G - i >= HP ? (int)HP : 1;                                     \
                    if (hd == 64)                                                                   \
                        (pass == 3 ? heads64x3_##SFX : heads64x1_##SFX)(qi, k, v, page_stride, table, L, out + at, kvh, bs, scale); \
                    else                                                                            \
                        (pass == 2 ? heads128x2_##SFX : heads128x1_##SFX)(qi, k, v, page_stride, table, L, out + at, kvh, bs, scale); \
                    i += pass;                                                                      \
                }                                                                                   \
        return 0;                                                                                   \
    }

DECODE_ENTRY(paged_decode_f32, float, decode_any_f32, f32)
DECODE_ENTRY(paged_decode_bf16, uint16_t, decode_any_bf16, bf16)
