/* y = x @ dequant(W)^T on CPUs, W in GGUF blocks (Q8_0, Q4_0, Q4_1) of 32 inputs each, or in F32 / BF16
   "blocks" (32 plain floats or bfloat16s: dense weights viewed as bytes, no copy); bf16 widens exactly to
   fp32, so a BF16 weight's matmul is the fp32 matmul on its values, accumulated in fp32.

   The weights stay in their blocks and are dequantized inside the dot products; x stays fp32
   (llama.cpp quantizes activations to 8 bits, we do not). Each weight comes out as the exact float
   gguf's own dequantize gives (d*q, and d*q + m rounded twice: built with -ffp-contract=off, so the
   only FMAs are the ones written, in the dot products), so y is the fp32 matmul on the dequantized
   weights up to summation order.

   Few rows of x (decode): threads split the output rows; each block is dequantized into registers
   once and serves up to 4 rows of x. More rows: a tile of NT output rows x KC inputs is dequantized
   into an L1-resident buffer once and reused by every row of x, in register-blocked MR x NR dot
   products. AVX-512 or AVX2, picked at run time; scalar otherwise. Threads: torch's OpenMP pool. */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

enum { F32 = 0, Q4_0 = 2, Q4_1 = 3, Q8_0 = 8, BF16 = 30 }; /* ggml_type values */
enum { ISA_SCALAR = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };
enum { QK = 32, NT = 8, KC = 512, MAX_GEMV_ROWS = 4 };

#define INLINE static inline __attribute__((always_inline))

static int block_bytes(int64_t type) {
    return type == Q8_0 ? 34 : type == Q4_0 ? 18 : type == Q4_1 ? 20 : type == F32 ? 4 * QK : type == BF16 ? 2 * QK : 0;
}

static float fp16_to_f32(const uint8_t *p) { /* exact, subnormals and inf/NaN included */
    uint16_t h;
    memcpy(&h, p, 2);
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    uint32_t u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        u = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        u = sign;
    } else { /* subnormal: normalise */
        int e = -1;
        uint32_t m = man;
        do { e++; m <<= 1; } while (!(m & 0x400));
        u = sign | ((uint32_t)(112 - e) << 23) | ((m & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- scalar ---------------------------------------------------------------------------------- */

static void dequant_scalar(int type, const uint8_t *b, float *w) {
    if (type == F32) {
        memcpy(w, b, sizeof(float) * QK);
        return;
    }
    if (type == BF16) {
        for (int i = 0; i < QK; i++) {
            const uint32_t u = (uint32_t)(b[2 * i] | b[2 * i + 1] << 8) << 16;
            memcpy(w + i, &u, 4);
        }
        return;
    }
    const float d = fp16_to_f32(b);
    if (type == Q8_0) {
        for (int i = 0; i < QK; i++) w[i] = (float)(int8_t)b[2 + i] * d;
    } else if (type == Q4_0) {
        for (int i = 0; i < QK / 2; i++) {
            w[i] = d * (float)((b[2 + i] & 15) - 8);
            w[i + QK / 2] = d * (float)((b[2 + i] >> 4) - 8);
        }
    } else {
        const float m = fp16_to_f32(b + 2);
        for (int i = 0; i < QK / 2; i++) {
            w[i] = d * (float)(b[4 + i] & 15) + m;
            w[i + QK / 2] = d * (float)(b[4 + i] >> 4) + m;
        }
    }
}

static void rows_scalar(int type, int R, const uint8_t *wrow, int64_t nb, int bb, const float *x,
                        int64_t xs, float *res) {
    float acc[MAX_GEMV_ROWS][QK] = {{0.f}}, w[QK];
    for (int64_t b = 0; b < nb; b++) {
        dequant_scalar(type, wrow + b * bb, w);
        for (int r = 0; r < R; r++)
            for (int i = 0; i < QK; i++) acc[r][i] += x[r * xs + b * QK + i] * w[i];
    }
    for (int r = 0; r < R; r++) {
        float s = 0.f;
        for (int i = 0; i < QK; i++) s += acc[r][i];
        res[r] = s;
    }
}

static void micro_scalar(int mr, int nr, const float *x, int64_t xs, const float *wd, int64_t kc,
                         float *out, int64_t os) {
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) {
            float s = 0.f;
            for (int64_t k = 0; k < kc; k++) s += x[i * xs + k] * wd[j * KC + k];
            out[i * os + j] += s;
        }
}

#if defined(__x86_64__)
/* ---- AVX2 + FMA (+F16C for the scales) -------------------------------------------------------- */
#define AVX2 __attribute__((target("avx2,fma,f16c")))

AVX2 INLINE float f16_avx2(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* 32 weights of one block -> w[0..3], 8 each, in order */
AVX2 INLINE void dequant_avx2(int type, const uint8_t *b, __m256 w[4]) {
    if (type == F32) {
        for (int i = 0; i < 4; i++) w[i] = _mm256_loadu_ps((const float *)b + 8 * i);
        return;
    }
    if (type == BF16) {
        for (int i = 0; i < 4; i++) {
            const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(b + 16 * i)));
            w[i] = _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
        }
        return;
    }
    const __m256 d = _mm256_set1_ps(f16_avx2(b));
    if (type == Q8_0) {
        for (int i = 0; i < 4; i++) {
            const __m128i q = _mm_loadl_epi64((const __m128i *)(b + 2 + 8 * i));
            w[i] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d);
        }
        return;
    }
    const __m128i raw = _mm_loadu_si128((const __m128i *)(b + (type == Q4_1 ? 4 : 2)));
    const __m128i low4 = _mm_set1_epi8(15);
    __m128i lo = _mm_and_si128(raw, low4), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), low4);
    if (type == Q4_0) {
        lo = _mm_sub_epi8(lo, _mm_set1_epi8(8));
        hi = _mm_sub_epi8(hi, _mm_set1_epi8(8));
    }
    const __m128i q[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)}; /* low nibbles first */
    for (int i = 0; i < 4; i++) w[i] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q[i])));
    if (type == Q4_1) {
        const __m256 m = _mm256_set1_ps(f16_avx2(b + 2));
        for (int i = 0; i < 4; i++) w[i] = _mm256_add_ps(w[i], m);
    }
}

AVX2 INLINE float hsum_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* res[r] = dot(dequant(wrow), x row r) for R rows sharing each dequantized block */
AVX2 INLINE void rows_avx2_body(int type, int R, const uint8_t *wrow, int64_t nb, int bb, const float *x,
                                int64_t xs, float *res) {
    enum { NACC = 4 };
    const int nacc = R == 1 ? 4 : 2; /* one row alone: more independent FMA chains */
    __m256 acc[MAX_GEMV_ROWS][NACC];
    for (int r = 0; r < R; r++)
        for (int a = 0; a < NACC; a++) acc[r][a] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256 w[4];
        dequant_avx2(type, wrow + b * bb, w);
        const float *xb = x + b * QK;
        for (int r = 0; r < R; r++)
            for (int i = 0; i < 4; i++)
                acc[r][i % nacc] = _mm256_fmadd_ps(w[i], _mm256_loadu_ps(xb + r * xs + 8 * i), acc[r][i % nacc]);
    }
    for (int r = 0; r < R; r++) {
        __m256 s = _mm256_add_ps(acc[r][0], acc[r][1]);
        if (nacc == 4) s = _mm256_add_ps(s, _mm256_add_ps(acc[r][2], acc[r][3]));
        res[r] = hsum_avx2(s);
    }
}

#define ROWS_CASES(BODY, ...)                                                                       \
    switch (type * 8 + R) {                                                                         \
        case F32 * 8 + 1: BODY(F32, 1, __VA_ARGS__); break;                                          \
        case F32 * 8 + 2: BODY(F32, 2, __VA_ARGS__); break;                                          \
        case F32 * 8 + 3: BODY(F32, 3, __VA_ARGS__); break;                                          \
        case F32 * 8 + 4: BODY(F32, 4, __VA_ARGS__); break;                                          \
        case BF16 * 8 + 1: BODY(BF16, 1, __VA_ARGS__); break;                                        \
        case BF16 * 8 + 2: BODY(BF16, 2, __VA_ARGS__); break;                                        \
        case BF16 * 8 + 3: BODY(BF16, 3, __VA_ARGS__); break;                                        \
        case BF16 * 8 + 4: BODY(BF16, 4, __VA_ARGS__); break;                                        \
        case Q8_0 * 8 + 1: BODY(Q8_0, 1, __VA_ARGS__); break;                                        \
        case Q8_0 * 8 + 2: BODY(Q8_0, 2, __VA_ARGS__); break;                                        \
        case Q8_0 * 8 + 3: BODY(Q8_0, 3, __VA_ARGS__); break;                                        \
        case Q8_0 * 8 + 4: BODY(Q8_0, 4, __VA_ARGS__); break;                                        \
        case Q4_0 * 8 + 1: BODY(Q4_0, 1, __VA_ARGS__); break;                                        \
        case Q4_0 * 8 + 2: BODY(Q4_0, 2, __VA_ARGS__); break;                                        \
        case Q4_0 * 8 + 3: BODY(Q4_0, 3, __VA_ARGS__); break;                                        \
        case Q4_0 * 8 + 4: BODY(Q4_0, 4, __VA_ARGS__); break;                                        \
        case Q4_1 * 8 + 1: BODY(Q4_1, 1, __VA_ARGS__); break;                                        \
        case Q4_1 * 8 + 2: BODY(Q4_1, 2, __VA_ARGS__); break;                                        \
        case Q4_1 * 8 + 3: BODY(Q4_1, 3, __VA_ARGS__); break;                                        \
        case Q4_1 * 8 + 4: BODY(Q4_1, 4, __VA_ARGS__); break;                                        \
    }

AVX2 static void rows_avx2(int type, int R, const uint8_t *wrow, int64_t nb, int bb, const float *x,
                           int64_t xs, float *res) {
    ROWS_CASES(rows_avx2_body, wrow, nb, bb, x, xs, res)
}

AVX2 static void dequant_row_avx2(int type, const uint8_t *b, int64_t nb, int bb, float *w) {
    for (int64_t k = 0; k < nb; k++) {
        __m256 v[4];
        dequant_avx2(type, b + k * bb, v);
        for (int i = 0; i < 4; i++) _mm256_storeu_ps(w + k * QK + 8 * i, v[i]);
    }
}

/* out[i][j] += dot(x row i, wd row j) over kc inputs, for an MR x NR tile (kc a multiple of 32) */
AVX2 INLINE void micro_avx2_body(int MR, int NR, const float *x, int64_t xs, const float *wd, int64_t kc,
                                 float *out, int64_t os) {
    __m256 acc[3][4];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = _mm256_setzero_ps();
    for (int64_t k = 0; k < kc; k += 8) {
        __m256 xv[3];
        for (int i = 0; i < MR; i++) xv[i] = _mm256_loadu_ps(x + i * xs + k);
        for (int j = 0; j < NR; j++) {
            const __m256 wv = _mm256_load_ps(wd + j * KC + k);
            for (int i = 0; i < MR; i++) acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
        }
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) out[i * os + j] += hsum_avx2(acc[i][j]);
}

#define MICRO_CASE(BODY, M, N) case M * 8 + N: BODY(M, N, x, xs, wd, kc, out, os); break;

AVX2 static void micro_avx2(int mr, int nr, const float *x, int64_t xs, const float *wd, int64_t kc,
                            float *out, int64_t os) {
    switch (mr * 8 + nr) {
        MICRO_CASE(micro_avx2_body, 1, 1) MICRO_CASE(micro_avx2_body, 1, 2)
        MICRO_CASE(micro_avx2_body, 1, 3) MICRO_CASE(micro_avx2_body, 1, 4)
        MICRO_CASE(micro_avx2_body, 2, 1) MICRO_CASE(micro_avx2_body, 2, 2)
        MICRO_CASE(micro_avx2_body, 2, 3) MICRO_CASE(micro_avx2_body, 2, 4)
        MICRO_CASE(micro_avx2_body, 3, 1) MICRO_CASE(micro_avx2_body, 3, 2)
        MICRO_CASE(micro_avx2_body, 3, 3) MICRO_CASE(micro_avx2_body, 3, 4)
    }
}

/* ---- AVX-512 ---------------------------------------------------------------------------------- */
#define AVX512 __attribute__((target("avx512f,avx512bw,avx2,fma,f16c")))

/* 32 weights of one block -> w[0..1], 16 each, in order */
AVX512 INLINE void dequant_avx512(int type, const uint8_t *b, __m512 w[2]) {
    if (type == F32) {
        w[0] = _mm512_loadu_ps((const float *)b);
        w[1] = _mm512_loadu_ps((const float *)b + 16);
        return;
    }
    if (type == BF16) {
        for (int i = 0; i < 2; i++) {
            const __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(b + 32 * i)));
            w[i] = _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
        }
        return;
    }
    const __m512 d = _mm512_set1_ps(f16_avx2(b));
    if (type == Q8_0) {
        for (int i = 0; i < 2; i++) {
            const __m128i q = _mm_loadu_si128((const __m128i *)(b + 2 + 16 * i));
            w[i] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), d);
        }
        return;
    }
    /* the 16 values a nibble can stand for, computed as gguf does; vpermps reads an index's low 4 bits */
    const __m512 levels = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    __m512 table;
    if (type == Q4_0) {
        table = _mm512_mul_ps(d, _mm512_sub_ps(levels, _mm512_set1_ps(8.f)));
    } else {
        table = _mm512_add_ps(_mm512_mul_ps(d, levels), _mm512_set1_ps(f16_avx2(b + 2)));
    }
    const __m128i raw = _mm_loadu_si128((const __m128i *)(b + (type == Q4_1 ? 4 : 2)));
    w[0] = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(raw), table);                    /* low nibbles */
    w[1] = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_srli_epi16(raw, 4)), table); /* high */
}

AVX512 INLINE void rows_avx512_body(int type, int R, const uint8_t *wrow, int64_t nb, int bb, const float *x,
                                    int64_t xs, float *res) {
    __m512 acc[MAX_GEMV_ROWS][2];
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m512 w[2];
        dequant_avx512(type, wrow + b * bb, w);
        const float *xb = x + b * QK;
        for (int r = 0; r < R; r++)
            for (int i = 0; i < 2; i++) acc[r][i] = _mm512_fmadd_ps(w[i], _mm512_loadu_ps(xb + r * xs + 16 * i), acc[r][i]);
    }
    for (int r = 0; r < R; r++) res[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]));
}

AVX512 static void rows_avx512(int type, int R, const uint8_t *wrow, int64_t nb, int bb, const float *x,
                               int64_t xs, float *res) {
    ROWS_CASES(rows_avx512_body, wrow, nb, bb, x, xs, res)
}

AVX512 static void dequant_row_avx512(int type, const uint8_t *b, int64_t nb, int bb, float *w) {
    for (int64_t k = 0; k < nb; k++) {
        __m512 v[2];
        dequant_avx512(type, b + k * bb, v);
        _mm512_storeu_ps(w + k * QK, v[0]);
        _mm512_storeu_ps(w + k * QK + 16, v[1]);
    }
}

AVX512 INLINE void micro_avx512_body(int MR, int NR, const float *x, int64_t xs, const float *wd, int64_t kc,
                                     float *out, int64_t os) {
    __m512 acc[3][4];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; k += 16) {
        __m512 xv[3];
        for (int i = 0; i < MR; i++) xv[i] = _mm512_loadu_ps(x + i * xs + k);
        for (int j = 0; j < NR; j++) {
            const __m512 wv = _mm512_load_ps(wd + j * KC + k);
            for (int i = 0; i < MR; i++) acc[i][j] = _mm512_fmadd_ps(xv[i], wv, acc[i][j]);
        }
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) out[i * os + j] += _mm512_reduce_add_ps(acc[i][j]);
}

AVX512 static void micro_avx512(int mr, int nr, const float *x, int64_t xs, const float *wd, int64_t kc,
                                float *out, int64_t os) {
    switch (mr * 8 + nr) {
        MICRO_CASE(micro_avx512_body, 1, 1) MICRO_CASE(micro_avx512_body, 1, 2)
        MICRO_CASE(micro_avx512_body, 1, 3) MICRO_CASE(micro_avx512_body, 1, 4)
        MICRO_CASE(micro_avx512_body, 2, 1) MICRO_CASE(micro_avx512_body, 2, 2)
        MICRO_CASE(micro_avx512_body, 2, 3) MICRO_CASE(micro_avx512_body, 2, 4)
        MICRO_CASE(micro_avx512_body, 3, 1) MICRO_CASE(micro_avx512_body, 3, 2)
        MICRO_CASE(micro_avx512_body, 3, 3) MICRO_CASE(micro_avx512_body, 3, 4)
    }
}
#endif

/* ---- drivers ---------------------------------------------------------------------------------- */

typedef void (*rows_fn)(int, int, const uint8_t *, int64_t, int, const float *, int64_t, float *);
typedef void (*dequant_fn)(int, const uint8_t *, int64_t, int, float *);
typedef void (*micro_fn)(int, int, const float *, int64_t, const float *, int64_t, float *, int64_t);

static void dequant_row_scalar(int type, const uint8_t *b, int64_t nb, int bb, float *w) {
    for (int64_t k = 0; k < nb; k++) dequant_scalar(type, b + k * bb, w + k * QK);
}

/* The best path this CPU runs: 2 AVX-512, 1 AVX2 + FMA + F16C, 0 scalar. */
static int detect_isa(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return ISA_AVX2;
#endif
    return ISA_SCALAR;
}

int quant_best_isa(void) {
    static int isa = -1; /* a race only writes the same value twice */
    if (isa < 0) isa = detect_isa();
    return isa;
}

static int pick(int64_t isa, rows_fn *rows, dequant_fn *deq, micro_fn *micro) {
    *rows = rows_scalar, *deq = dequant_row_scalar, *micro = micro_scalar;
#if defined(__x86_64__)
    if (isa == ISA_AVX512) *rows = rows_avx512, *deq = dequant_row_avx512, *micro = micro_avx512;
    if (isa == ISA_AVX2) *rows = rows_avx2, *deq = dequant_row_avx2, *micro = micro_avx2;
#endif
    return isa >= ISA_SCALAR && isa <= quant_best_isa();
}

/* ---- many rows, best path: x packed transposed, outer products ------------------------------- */
/* The tiled path above reduces every (row of x, row of W) dot product across a register's lanes. Here x's
   rows sit in the lanes instead: x is packed once per call as xT (K, TP), TP its rows rounded up to VW,
   and each step broadcasts one weight against VW rows of x. No horizontal sums, no transposed weights;
   the result comes out transposed per tile (outT (NTW, TP)) and is written back once. Plain GCC vector
   types: the compiler maps them onto this CPU's widest registers (-march=native). */
#if defined(__AVX512F__)
#define VW 16
#define ACC_REGS 24 /* of 32 zmm */
#else
#define VW 8
#define ACC_REGS 12 /* of 16 ymm */
#endif
typedef float vecf __attribute__((vector_size(VW * sizeof(float))));
/* a*b + c in one rounding: with -ffp-contract=off the compiler would split `c += a * b` into a multiply and
   an add (half the throughput), so the FMA is written out. */
/* A float in every lane: `(vecf){0} + s` is not a broadcast under strict IEEE rules (-0 + 0 = +0), so the
   compiler added the zero in a scalar op and broadcast from a register; the intrinsic loads it broadcast. */
#if VW == 16
#define VFMA(a, b, c) ((vecf)_mm512_fmadd_ps((__m512)(a), (__m512)(b), (__m512)(c)))
#define VSET1(s) ((vecf)_mm512_set1_ps(s))
#elif defined(__FMA__)
#define VFMA(a, b, c) ((vecf)_mm256_fmadd_ps((__m256)(a), (__m256)(b), (__m256)(c)))
#define VSET1(s) ((vecf)_mm256_set1_ps(s))
#else
#define VFMA(a, b, c) ((a) * (b) + (c))
#define VSET1(s) ((vecf){0} + (s))
#endif
enum { TV_MAX = 4, TCH = 256, NTW = 48, KCW = 128 };
/* Floats ahead each weight row is prefetched while its broadcasts run: dense weights stream from memory
   in place, 16 rows at once per thread, which the hardware prefetchers alone left at ~19 GB/s. Chosen on
   the 2-core AVX-512 host by the layers' matmul time at 16 and 64 rows of SmolLM2 (16-256 tried: 48-64
   best, 16 rows 22.2 -> 16.7 ms, 64 rows 49 -> 39 ms). */
enum { PREFETCH = 64 }; /* x rows per pass TV_MAX * VW; rows per chunk; tile */

/* outT[j][:TV*VW] += sum_k w[j][k] xT[k][:TV*VW] for MRW rows of w (wstride floats apart) */
#define OUTER_BODY(MRW, TV, WSTRIDE, PF)                                                            \
    do {                                                                                            \
        vecf acc[MRW][TV];                                                                          \
        for (int j = 0; j < MRW; j++)                                                               \
            for (int v = 0; v < TV; v++) acc[j][v] = *(const vecf *)(outT + j * tp + v * VW);       \
        for (int64_t k = 0; k < kc; k++) {                                                          \
            if (PF && (k & 15) == 0) /* once per cache line of each row */                         \
                for (int j = 0; j < MRW; j++) __builtin_prefetch(w + j * (WSTRIDE) + k + PREFETCH); \
            vecf xv[TV];                                                                            \
            for (int v = 0; v < TV; v++) xv[v] = *(const vecf *)(xT + k * tp + v * VW);             \
            for (int j = 0; j < MRW; j++) {                                                         \
                const vecf b = VSET1(w[j * (WSTRIDE) + k]);                                          \
                for (int v = 0; v < TV; v++) acc[j][v] = VFMA(b, xv[v], acc[j][v]);              \
            }                                                                                       \
        }                                                                                           \
        for (int j = 0; j < MRW; j++)                                                               \
            for (int v = 0; v < TV; v++) *(vecf *)(outT + j * tp + v * VW) = acc[j][v];             \
    } while (0)

/* rows of w per call at TV vectors of x rows: as many accumulators as the registers hold, up to 16; dense
   rows read in place at one vector of x rows take 8: each needs its own pointer, and 16 of them spilled
   (dense fp32 at 16 rows of x: SmolLM2's 30 layers 16.8-19.6 -> 15.0-16.0 ms, five runs each; 32 rows
   and the dequantized tiles, read at one stride, were as fast or faster with more) */
static int outer_rows(int tv, int dense) {
    return dense && tv == 1 ? 8 : ACC_REGS / tv < 16 ? ACC_REGS / tv : 16;
}

/* outer: rows of w wstride floats apart (dense weights read in place, each row prefetched ahead); outer_tile:
   a dequantized tile, rows KCW apart, read from one base pointer at constant offsets (the strided rows take a
   register each) */
#define OUTER_FN(NAME, WSTRIDE, PF)                                                                 \
    static void NAME(int mrw, int tv, const float *w, int64_t wstride, const float *xT, int64_t tp,  \
                     int64_t kc, float *outT) {                                                     \
        switch (mrw * 8 + tv) {                                                                     \
            OUTER_CASES(WSTRIDE, PF)                                                                \
            OUTER_CASE(1, 1, WSTRIDE, PF) OUTER_CASE(1, 2, WSTRIDE, PF)                             \
            OUTER_CASE(1, 3, WSTRIDE, PF) OUTER_CASE(1, 4, WSTRIDE, PF)                             \
        }                                                                                           \
        for (int j = 0; j < mrw; j++) /* tails */                                                   \
            NAME(1, tv, w + j * wstride, wstride, xT, tp, kc, outT + j * tp);                       \
    }
#define OUTER_CASE(M, V, WSTRIDE, PF) case M * 8 + V: OUTER_BODY(M, V, WSTRIDE, PF); return;
#if VW == 16
#define OUTER_CASES(WS, PF) \
    OUTER_CASE(16, 1, WS, PF) OUTER_CASE(8, 1, WS, PF) OUTER_CASE(12, 2, WS, PF) OUTER_CASE(8, 3, WS, PF) \
    OUTER_CASE(6, 4, WS, PF)
#else
#define OUTER_CASES(WS, PF) \
    OUTER_CASE(12, 1, WS, PF) OUTER_CASE(8, 1, WS, PF) OUTER_CASE(6, 2, WS, PF) OUTER_CASE(4, 3, WS, PF) \
    OUTER_CASE(3, 4, WS, PF)
#endif
OUTER_FN(outer, wstride, 1)
OUTER_FN(outer_tile, KCW, 0)

#if VW == 16
/* dst[c * ds + r] = src[r * ss + c] for a 16 x 16 block, in registers: pairs, quads, then 128-bit lanes */
static inline void transpose16(const float *src, int64_t ss, float *dst, int64_t ds) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + i * ss);
    for (int i = 0; i < 16; i += 2)
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]), t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    for (int i = 0; i < 16; i += 4)
        for (int h = 0; h < 2; h++) {
            const __m512d a = _mm512_castps_pd(t[i + h]), b = _mm512_castps_pd(t[i + h + 2]);
            r[i + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
            r[i + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        }
    for (int i = 0; i < 16; i += 8)
        for (int j = i; j < i + 4; j++)
            t[j] = _mm512_shuffle_f32x4(r[j], r[j + 4], 0x88), t[j + 4] = _mm512_shuffle_f32x4(r[j], r[j + 4], 0xdd);
    for (int j = 0; j < 8; j++)
        r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88), r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd);
    for (int i = 0; i < 16; i++) _mm512_storeu_ps(dst + i * ds, r[i]);
}
#endif

/* dst[c * ds + r] = src[r * ss + c] for r < R, c < C, in 16 x 16 blocks (x packed into xT, outT written back:
   one element at a time down a column these were ~10% of a prefill step) */
static void transpose(const float *src, int64_t ss, float *dst, int64_t ds, int64_t R, int64_t C) {
    for (int64_t r0 = 0; r0 < R; r0 += 16)
        for (int64_t c0 = 0; c0 < C; c0 += 16) {
#if VW == 16
            if (r0 + 16 <= R && c0 + 16 <= C) {
                transpose16(src + r0 * ss + c0, ss, dst + c0 * ds + r0, ds);
                continue;
            }
#endif
            for (int64_t r = r0; r < R && r < r0 + 16; r++)
                for (int64_t c = c0; c < C && c < c0 + 16; c++) dst[c * ds + r] = src[r * ss + c];
        }
}

/* A buffer of at least n floats, 64-byte aligned, kept by the calling thread and grown as needed: allocating
   ~1 MiB per call let glibc's adaptive mmap threshold move these buffers onto the heap, where a long-running
   server's RSS crept up (the soak test saw it). */
static float *reusable(size_t n) {
    static __thread float *buf = NULL;
    static __thread size_t cap = 0;
    if (n > cap) {
        free(buf);
        buf = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
        cap = buf ? n : 0;
    }
    return buf;
}

/* Tile n0's weights over inputs k0 .. k0 + kc, rows *stride floats apart: dense ones read in place, blocks
   dequantized into wd (rows KCW apart) */
static const float *tile_weights(const uint8_t *w, int64_t ws, int64_t n0, int nn, int64_t k0, int64_t kc, int type,
                                 int bb, dequant_fn deq, float *wd, int64_t *stride) {
    if (type == F32) {
        *stride = ws / (int64_t)sizeof(float);
        return (const float *)(w + n0 * ws) + k0;
    }
    for (int j = 0; j < nn; j++) deq(type, w + (n0 + j) * ws + k0 / QK * bb, kc / QK, bb, wd + j * KCW);
    *stride = KCW;
    return wd;
}

/* out (T, N) for T rows of x at a time up to TCH: pack xT, then tiles of NTW outputs split across threads */
static int matmul_packed(const float *x, int64_t xs, const uint8_t *w, int64_t ws, float *out, int64_t os,
                         int64_t T, int64_t N, int64_t K, int type, int bb, dequant_fn deq, int64_t num_threads) {
    const int64_t TPM = (TCH + VW - 1) / VW * VW, per_thread = NTW * TPM + NTW * KCW;
    float *xT = reusable((size_t)(K * TPM + num_threads * per_thread));
    if (!xT) return -4;
    float *scratch = xT + K * TPM;
    /* one team for the whole call: each chunk of x is packed by both threads (split over K; packed by one, the
       other waited ~6% of a prefill step), then its tiles split across them */
    _Pragma("omp parallel num_threads(num_threads)")
    for (int64_t t0 = 0; t0 < T; t0 += TCH) {
        const int64_t tn = T - t0 < TCH ? T - t0 : TCH, tp = (tn + VW - 1) / VW * VW;
        _Pragma("omp for schedule(static)")
        for (int64_t k = 0; k < K; k += 16) { /* K is a multiple of 32 */
            transpose(x + t0 * xs + k, xs, xT + k * tp, tp, tn, 16);
            for (int64_t kk = k; kk < k + 16; kk++)
                for (int64_t t = tn; t < tp; t++) xT[kk * tp + t] = 0.f;
        }
        _Pragma("omp for schedule(dynamic, 1)")
        for (int64_t n0 = 0; n0 < N; n0 += NTW) {
            float *outT = scratch + (int64_t)omp_get_thread_num() * per_thread, *wd = outT + NTW * TPM;
            const int nn = N - n0 < NTW ? (int)(N - n0) : NTW;
            memset(outT, 0, sizeof(float) * (size_t)(nn * tp));
            for (int64_t k0 = 0; k0 < K; k0 += KCW) {
                const int64_t kc = K - k0 < KCW ? K - k0 : KCW;
                if (type != F32) { /* a tile's blocks are one contiguous run: its share of the next tile is fetched */
                    const int64_t nch = (K + KCW - 1) / KCW, part = (NTW * ws + nch - 1) / nch;
                    const uint8_t *ahead = w + (n0 + NTW) * ws + k0 / KCW * part;
                    for (int64_t o = 0; o < part; o += 64) __builtin_prefetch(ahead + o, 0, 3);
                }
                int64_t wstride;
                const float *wk = tile_weights(w, ws, n0, nn, k0, kc, type, bb, deq, wd, &wstride);
                for (int64_t v0 = 0; v0 < tp; v0 += TV_MAX * VW) {
                    const int tv = (int)((tp - v0) / VW < TV_MAX ? (tp - v0) / VW : TV_MAX);
                    const int mr = outer_rows(tv, type == F32);
                    for (int j0 = 0; j0 < nn; j0 += mr)
                        (type == F32 ? outer : outer_tile)(nn - j0 < mr ? nn - j0 : mr, tv, wk + j0 * wstride, wstride,
                                                           xT + k0 * tp + v0, tp, kc, outT + j0 * tp + v0);
                }
            }
            transpose(outT, tp, out + t0 * os + n0, os, nn, tn);
        }
    }
    return 0;
}

/* ---- many rows of x: weights in the lanes -------------------------------------------------------- */
/* From WIDE_MIN_ROWS rows of x the packed path's two transposes (x in, the result out: T x (K + N) floats a
   call) outweigh a transposed weight tile: here each tile (NTW outputs x KCW inputs, dequantized or read in
   place) is transposed once into wT (KCW, NTW), x's elements are broadcast from where they lie, and each
   accumulator holds VW consecutive outputs of one row of x, so results go back row by row. Every output is
   the same FMA chain over k as on the packed path: the results are bit-identical. SmolLM2's 30 layers, fp32,
   both builds interleaved in one process: 128 rows equal, 256 rows 167.5 -> 160.9 ms, 2048 rows 1580 -> 1237
   ms (medians of 6; packed below 128: at 64 rows 6.7-7.3 vs 7.8 ms). */
enum { WIDE_MIN_ROWS = 128, NV = 3 };
#if VW == 16
#define MT_MAX 8 /* 8 x 3 accumulators + 3 weight vectors + a broadcast of 32 zmm */
#else
#define MT_MAX 4 /* 4 x 3 + 3 + 1 of 16 ymm */
#endif

/* o[t][v * VW + :VW] += sum_k x[t][k] wT[k][v * VW + :VW] for MT rows of x and NV vectors of outputs */
#define WIDE_BODY(MT)                                                                               \
    do {                                                                                            \
        vecf acc[MT][NV];                                                                           \
        for (int t = 0; t < MT; t++)                                                                \
            for (int v = 0; v < NV; v++) acc[t][v] = *(const vecf *)(o + t * NTW + v * VW);        \
        for (int64_t k = 0; k < kc; k++) {                                                          \
            vecf wv[NV];                                                                            \
            for (int v = 0; v < NV; v++) wv[v] = *(const vecf *)(wT + k * NTW + v * VW);            \
            for (int t = 0; t < MT; t++) {                                                          \
                const vecf b = VSET1(x[t * xs + k]);                                                \
                for (int v = 0; v < NV; v++) acc[t][v] = VFMA(wv[v], b, acc[t][v]);                 \
            }                                                                                       \
        }                                                                                           \
        for (int t = 0; t < MT; t++)                                                                \
            for (int v = 0; v < NV; v++) *(vecf *)(o + t * NTW + v * VW) = acc[t][v];              \
    } while (0)

static void wide(int mt, const float *x, int64_t xs, const float *wT, int64_t kc, float *o) {
    switch (mt) {
        case 8: WIDE_BODY(8); return;
        case 7: WIDE_BODY(7); return;
        case 6: WIDE_BODY(6); return;
        case 5: WIDE_BODY(5); return;
        case 4: WIDE_BODY(4); return;
        case 3: WIDE_BODY(3); return;
        case 2: WIDE_BODY(2); return;
        case 1: WIDE_BODY(1); return;
    }
}

/* out (T, N): jobs of (TCH rows of x, NTW outputs) split across threads; a job's outputs gather in an
   L1/L2-resident buffer (TCH, NTW) and are copied out row by row */
static int matmul_wide(const float *x, int64_t xs, const uint8_t *w, int64_t ws, float *out, int64_t os, int64_t T,
                       int64_t N, int64_t K, int type, int bb, dequant_fn deq, int64_t num_threads) {
    const int64_t per_thread = NTW * KCW * 2 + TCH * NTW, n_tiles = (N + NTW - 1) / NTW;
    const int64_t jobs = n_tiles * ((T + TCH - 1) / TCH);
    float *buf = reusable((size_t)(num_threads * per_thread));
    if (!buf) return -4;
    _Pragma("omp parallel for schedule(dynamic, 1) num_threads(num_threads)")
    for (int64_t job = 0; job < jobs; job++) { /* tiles of one chunk of x first: its rows stay in cache */
        float *wd = buf + (int64_t)omp_get_thread_num() * per_thread, *wT = wd + NTW * KCW, *o = wT + NTW * KCW;
        const int64_t n0 = job % n_tiles * NTW, t0 = job / n_tiles * TCH;
        const int nn = N - n0 < NTW ? (int)(N - n0) : NTW, tn = T - t0 < TCH ? (int)(T - t0) : TCH;
        memset(o, 0, sizeof(float) * (size_t)(tn * NTW));
        for (int64_t k0 = 0; k0 < K; k0 += KCW) {
            const int64_t kc = K - k0 < KCW ? K - k0 : KCW;
            int64_t stride;
            const float *src = tile_weights(w, ws, n0, nn, k0, kc, type, bb, deq, wd, &stride);
            transpose(src, stride, wT, NTW, nn, kc);
            for (int64_t k = 0; k < kc && nn < NTW; k++) /* a last, narrower tile: zero weights past it */
                memset(wT + k * NTW + nn, 0, sizeof(float) * (size_t)(NTW - nn));
            for (int v0 = 0; v0 * VW < nn; v0 += NV)
                for (int t = 0; t < tn; t += MT_MAX)
                    wide(tn - t < MT_MAX ? tn - t : MT_MAX, x + (t0 + t) * xs + k0, xs, wT + v0 * VW, kc,
                         o + t * NTW + v0 * VW);
        }
        for (int t = 0; t < tn; t++) memcpy(out + (t0 + t) * os + n0, o + t * NTW, sizeof(float) * (size_t)nn);
    }
    return 0;
}

/* x (T, K) rows `xs` floats apart; w (N, K/32 blocks) rows `ws` bytes apart; out (T, N) rows `os` apart.
   isa: -1 = the best this CPU runs. Up to gemv_rows rows of x (1.5x that for quantized blocks) take the
   register path; with isa -1, more take the packed outer-product path, lanes past T zero (9-15 rows with
   AVX-512's 16 lanes: a SmolLM2 fp32 decode step 1.23-1.33x faster than on the tiled path, the weights
   streamed from memory), the rest the tiled one (tests name each isa to check each path against the twin).
   0 on success; -1 unknown type, -2 K not a multiple of 32 or bad sizes, -3 isa not available here, -4 out
   of memory. */
int quant_matmul_f32(const float *x, int64_t xs, const uint8_t *w, int64_t ws, float *out, int64_t os,
                     int64_t T, int64_t N, int64_t K, int64_t type, int64_t isa, int64_t gemv_rows,
                     int64_t num_threads) {
    const int bb = block_bytes(type);
    if (bb == 0) return -1;
    if (K <= 0 || K % QK || T < 0 || N < 0 || ws < K / QK * bb || xs < K || os < N) return -2;
    rows_fn rows;
    dequant_fn deq;
    micro_fn micro;
    if (!pick(isa < 0 ? quant_best_isa() : isa, &rows, &deq, &micro)) return -3;
    const int64_t nb = K / QK;
    /* quantized blocks stay on the register path half as far again: the packed path first dequantizes them
       into a tile (a SmolLM2 Q4_1 decode step at 9/10/11 rows 1.21/1.14/1.21x faster here, even at 12) */
    if (type != F32 && type != BF16) gemv_rows += gemv_rows / 2;
    if (T <= gemv_rows) {
        _Pragma("omp parallel for schedule(guided, 16) num_threads(num_threads)")
        for (int64_t n = 0; n < N; n++) {
            for (int64_t t0 = 0; t0 < T; t0 += MAX_GEMV_ROWS) {
                const int R = T - t0 < MAX_GEMV_ROWS ? (int)(T - t0) : MAX_GEMV_ROWS;
                float res[MAX_GEMV_ROWS];
                rows((int)type, R, w + n * ws, nb, bb, x + t0 * xs, xs, res);
                for (int r = 0; r < R; r++) out[(t0 + r) * os + n] = res[r];
            }
        }
        return 0;
    }
    if (isa < 0 && T >= WIDE_MIN_ROWS)
        return matmul_wide(x, xs, w, ws, out, os, T, N, K, (int)type, bb, deq, num_threads);
    if (isa < 0 && (T >= VW || T > gemv_rows)) return matmul_packed(x, xs, w, ws, out, os, T, N, K, (int)type, bb, deq, num_threads);
    _Pragma("omp parallel for schedule(dynamic, 1) num_threads(num_threads)")
    for (int64_t n0 = 0; n0 < N; n0 += NT) {
        float wd[NT * KC] __attribute__((aligned(64))); /* 16 KiB: a tile of dequantized weights */
        const int nn = N - n0 < NT ? (int)(N - n0) : NT;
        for (int64_t t = 0; t < T; t++) memset(out + t * os + n0, 0, sizeof(float) * (size_t)nn);
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            const int64_t kc = K - k0 < KC ? K - k0 : KC;
            for (int j = 0; j < nn; j++) deq((int)type, w + (n0 + j) * ws + k0 / QK * bb, kc / QK, bb, wd + j * KC);
            for (int64_t t0 = 0; t0 < T; t0 += 3) {
                const int mr = T - t0 < 3 ? (int)(T - t0) : 3;
                for (int j0 = 0; j0 < nn; j0 += 4)
                    micro(mr, nn - j0 < 4 ? nn - j0 : 4, x + t0 * xs + k0, xs, wd + j0 * KC, kc,
                          out + t0 * os + n0 + j0, os);
            }
        }
    }
    return 0;
}
