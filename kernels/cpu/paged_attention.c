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
    int NAME(const T *q, const T *k_cache, const T *v_cache, int64_t page_stride,                   \
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

PAGED_DECODE(paged_decode_f32, float, ID, ID)
PAGED_DECODE(paged_decode_bf16, uint16_t, bf16_to_f32, f32_to_bf16)
