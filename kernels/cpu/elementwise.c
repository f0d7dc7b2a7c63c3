/* The per-token elementwise ops of a decoder layer on CPUs, fp32: RMSNorm with its residual add,
   rotary embedding in place, and the K/V store into cache pages. Each replaces several torch ops (and
   their dispatch, which at one decode row costs more than the arithmetic).

   Rotary is computed as transformers does, x * cos + rotate_half(x) * sin with each product rounded
   (built with -ffp-contract=off): bit for bit the twin. RMSNorm sums squares in its own order, so it
   equals the twin up to summation order. Tokens split across torch's OpenMP threads when there are many. */
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { PARALLEL_TOKENS = 64, SILU_PARALLEL_ELEMS = 8192 };

/* x (T, D) rows xs apart; if res: x += res (rows rs apart) first, in place. out (T, D) rows os apart
   = w * (x / sqrt(mean(x^2) + eps)). */
void add_rms_norm_f32(float *x, int64_t xs, const float *res, int64_t rs, const float *w, float *out,
                      int64_t os, int64_t T, int64_t D, float eps, int64_t num_threads) {
    _Pragma("omp parallel for schedule(static) num_threads(num_threads) if(T >= PARALLEL_TOKENS)")
    for (int64_t t = 0; t < T; t++) {
        float *xr = x + t * xs;
        if (res) {
            const float *rr = res + t * rs;
            for (int64_t i = 0; i < D; i++) xr[i] += rr[i];
        }
        float ss = 0.f;
        for (int64_t i = 0; i < D; i++) ss += xr[i] * xr[i];
        const float inv = 1.f / sqrtf(ss / (float)D + eps);
        float *o = out + t * os;
        for (int64_t i = 0; i < D; i++) o[i] = w[i] * (xr[i] * inv);
    }
}

static void rotate_heads(float *x, int64_t ts, int64_t hs, int64_t H, const float *c, const float *s,
                         int64_t half) {
    for (int64_t h = 0; h < H; h++) {
        float *v = x + h * hs;
        for (int64_t i = 0; i < half; i++) {
            const float a = v[i], b = v[i + half];
            v[i] = a * c[i] - b * s[i];
            v[i + half] = b * c[i + half] + a * s[i + half];
        }
    }
    (void)ts;
}

/* q (T, H, hd) and k (T, KH, hd), head dims contiguous, rotated in place by cos/sin (T, hd) rows cs apart. */
void rotary_f32(float *q, int64_t qts, int64_t qhs, int64_t H, float *k, int64_t kts, int64_t khs, int64_t KH,
                const float *cos, const float *sin, int64_t cs, int64_t T, int64_t hd, int64_t num_threads) {
    const int64_t half = hd / 2;
    _Pragma("omp parallel for schedule(static) num_threads(num_threads) if(T >= PARALLEL_TOKENS)")
    for (int64_t t = 0; t < T; t++) {
        rotate_heads(q + t * qts, qts, qhs, H, cos + t * cs, sin + t * cs, half);
        rotate_heads(k + t * kts, kts, khs, KH, cos + t * cs, sin + t * cs, half);
    }
}

/* token t's k and v rows (width floats, rows ks / vs apart) into cache slot slots[t] (< 0: skipped):
   page slot / bs at page_stride floats, offset slot % bs at slot_stride floats within it. 0, or -1 (nothing
   written) when a slot lies past the cache's num_pages pages. */
int store_kv_f32(const float *k, int64_t ks, const float *v, int64_t vs, float *k_cache, float *v_cache,
                 int64_t page_stride, int64_t slot_stride, int64_t bs, int64_t num_pages, const int64_t *slots,
                 int64_t T, int64_t width) {
    for (int64_t t = 0; t < T; t++)
        if (slots[t] >= num_pages * bs) return -1;
    for (int64_t t = 0; t < T; t++) {
        if (slots[t] < 0) continue;
        const int64_t at = slots[t] / bs * page_stride + slots[t] % bs * slot_stride;
        memcpy(k_cache + at, k + t * ks, sizeof(float) * (size_t)width);
        memcpy(v_cache + at, v + t * vs, sizeof(float) * (size_t)width);
    }
    return 0;
}

/* gate, up (T, I) rows gs / us apart. out (T, I) rows os apart = silu(gate) * up, silu as torch computes it,
   g / (1 + exp(-g)) (its exp and glibc's agree to an ulp). */
void silu_mul_f32(const float *gate, int64_t gs, const float *up, int64_t us, float *out, int64_t os, int64_t T,
                  int64_t I, int64_t num_threads) {
    /* one scalar expf per element (~2 ns): split from a few rows on, unlike the cheap ops above (at 16 rows
       one thread spent ~6% of a decode step here) */
    _Pragma("omp parallel for schedule(static) num_threads(num_threads) if(T * I >= SILU_PARALLEL_ELEMS)")
    for (int64_t t = 0; t < T; t++) {
        const float *g = gate + t * gs, *u = up + t * us;
        float *o = out + t * os;
        for (int64_t i = 0; i < I; i++) o[i] = g[i] / (1.f + expf(-g[i])) * u[i];
    }
}
