/* CD-k for a Bernoulli-Bernoulli RBM on 0/1 data, on the CPU: the block-Gibbs chain and the
 * gradient, with every product over a 0/1 layer done as a sum of the weight rows its ones select.
 * Built at first use by rbm_core/_kernels/__init__.py and called through ctypes; the typed body
 * (cd_binary_impl.h) is instantiated once for float (suffix _f32) and once for double (_f64).
 *
 * Uniforms: the i-th draw of a call is SplitMix64's i-th output for the call's key (a counter-based
 * generator, so a draw depends on its place in the chain only, never on the threads), scaled to
 * k * 2^-24 (float) or k * 2^-53 (double) like torch.rand. The draws of a call are numbered in
 * BlockGibbs' order: h0 (batch x H), then per step v (batch x V) and h (batch x H), row-major. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#define SPLITMIX_GAMMA 0x9E3779B97F4A7C15ULL

static inline uint64_t splitmix_output(uint64_t key, uint64_t index)
{
    uint64_t z = key + (index + 1) * SPLITMIX_GAMMA;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* exp(x) for |x| within the clamped range, vectorisable (no libm call): x = n ln2 + r with
 * |r| <= ln2 / 2, exp(r) by a polynomial, 2^n built in the exponent bits. */
static inline float exp_f32(float x)
{
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    /* n = round(x / ln2) by the 1.5 * 2^23 trick (no libm call, so the loop vectorises) */
    float n = (x * 1.44269504088896341f + 0x1.8p23f) - 0x1.8p23f;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    /* Cephes expf: about one ulp on [-ln2/2, ln2/2] */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    /* x NaN (non-finite parameters) leaves p NaN, whatever the scale; n NaN would make the conversion
     * and the shift below undefined (UBSan: out of range, left shift of a negative value) */
    n = n == n ? n : 0.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline double exp_f64(double x)
{
    x = x < -708.0 ? -708.0 : x;
    x = x > 709.0 ? 709.0 : x;
    double n = (x * 1.4426950408889634074 + 0x1.8p52) - 0x1.8p52;
    double r = x - n * 6.93147180369123816490e-01;
    r = r - n * 1.90821492927058770002e-10;
    /* Taylor series to r^13: the remainder is below 5e-18 for |r| <= ln2 / 2 */
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    n = n == n ? n : 0.0;  /* as in exp_f32 */
    int64_t bits = ((int64_t)n + 1023) << 52;
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* The width of the kernels' vectors: one AVX-512 register where there is one (half the
 * instructions per row summed: the chain 0.70 -> 0.60 ms, the gradient 0.23 -> 0.19 ms per 100-row
 * batch of a 784 x 500 RBM on one core of an AVX-512 EPYC, family 26), else one AVX register (or
 * two SSE ones). */
#ifdef __AVX512F__
#define VECTOR_BYTES 64
#else
#define VECTOR_BYTES 32
#endif

/* How a layer sums its input's weight rows: as they are, by Four-Russians tables, or by whichever
 * costs fewer row sums for the batch at hand. */
enum { TABLES_NEVER = 0, TABLES_ALWAYS = 1, TABLES_BY_COST = 2 };

static int team_size(int num_threads) { return num_threads > 0 ? num_threads : 1; }

/* This thread's work space of at least `bytes`, 64-byte aligned, kept between calls (the
 * threads of the OpenMP team persist, so the panels cost no page faults after the first call). */
static void *scratch(size_t bytes)
{
    static _Thread_local void *buffer;
    static _Thread_local size_t size;
    if (size < bytes) {
        free(buffer);
        size = (bytes + 63) / 64 * 64;
        buffer = aligned_alloc(64, size);
        if (buffer == NULL) size = 0;
    }
    return buffer;
}

/* Square blocks transposed in registers: out[c][r] = in[r][c], BLOCK x BLOCK (8 floats, 4 doubles). */
#ifdef __AVX__
#include <immintrin.h>
static inline void transpose_block_f32(const float *in, int64_t in_stride, float *out, int64_t out_stride)
{
    __m256 r0 = _mm256_loadu_ps(in), r1 = _mm256_loadu_ps(in + in_stride);
    __m256 r2 = _mm256_loadu_ps(in + 2 * in_stride), r3 = _mm256_loadu_ps(in + 3 * in_stride);
    __m256 r4 = _mm256_loadu_ps(in + 4 * in_stride), r5 = _mm256_loadu_ps(in + 5 * in_stride);
    __m256 r6 = _mm256_loadu_ps(in + 6 * in_stride), r7 = _mm256_loadu_ps(in + 7 * in_stride);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(out, _mm256_permute2f128_ps(s0, s4, 0x20));
    _mm256_storeu_ps(out + out_stride, _mm256_permute2f128_ps(s1, s5, 0x20));
    _mm256_storeu_ps(out + 2 * out_stride, _mm256_permute2f128_ps(s2, s6, 0x20));
    _mm256_storeu_ps(out + 3 * out_stride, _mm256_permute2f128_ps(s3, s7, 0x20));
    _mm256_storeu_ps(out + 4 * out_stride, _mm256_permute2f128_ps(s0, s4, 0x31));
    _mm256_storeu_ps(out + 5 * out_stride, _mm256_permute2f128_ps(s1, s5, 0x31));
    _mm256_storeu_ps(out + 6 * out_stride, _mm256_permute2f128_ps(s2, s6, 0x31));
    _mm256_storeu_ps(out + 7 * out_stride, _mm256_permute2f128_ps(s3, s7, 0x31));
}

static inline void transpose_block_f64(const double *in, int64_t in_stride, double *out, int64_t out_stride)
{
    __m256d r0 = _mm256_loadu_pd(in), r1 = _mm256_loadu_pd(in + in_stride);
    __m256d r2 = _mm256_loadu_pd(in + 2 * in_stride), r3 = _mm256_loadu_pd(in + 3 * in_stride);
    __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
    __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
    _mm256_storeu_pd(out, _mm256_permute2f128_pd(t0, t2, 0x20));
    _mm256_storeu_pd(out + out_stride, _mm256_permute2f128_pd(t1, t3, 0x20));
    _mm256_storeu_pd(out + 2 * out_stride, _mm256_permute2f128_pd(t0, t2, 0x31));
    _mm256_storeu_pd(out + 3 * out_stride, _mm256_permute2f128_pd(t1, t3, 0x31));
}

/* Bit j of the result: x[j] > 0, for BLOCK consecutive values. */
static inline uint64_t positive_bits_f32(const float *x)
{
    return (uint64_t)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x), _mm256_setzero_ps(), _CMP_GT_OQ));
}

static inline uint64_t positive_bits_f64(const double *x)
{
    return (uint64_t)_mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(x), _mm256_setzero_pd(), _CMP_GT_OQ));
}
#else
static inline uint64_t positive_bits_f32(const float *x)
{
    uint64_t bits = 0;
    for (int j = 0; j < 8; j++) bits |= (uint64_t)(x[j] > 0.0f) << j;
    return bits;
}

static inline uint64_t positive_bits_f64(const double *x)
{
    uint64_t bits = 0;
    for (int j = 0; j < 4; j++) bits |= (uint64_t)(x[j] > 0.0) << j;
    return bits;
}
#define TRANSPOSE_BLOCK_LOOPS(REAL_, BLOCK_)                                                            \
    for (int64_t r = 0; r < BLOCK_; r++)                                                                \
        for (int64_t c = 0; c < BLOCK_; c++) out[c * out_stride + r] = in[r * in_stride + c];
static inline void transpose_block_f32(const float *in, int64_t in_stride, float *out, int64_t out_stride)
{
    TRANSPOSE_BLOCK_LOOPS(float, 8)
}
static inline void transpose_block_f64(const double *in, int64_t in_stride, double *out, int64_t out_stride)
{
    TRANSPOSE_BLOCK_LOOPS(double, 4)
}
#endif

#define REAL float
#define SUFFIX _f32
#define EXP exp_f32
#define UNIFORM(bits) ((float)((bits) >> 40) * 0x1p-24f)
#define TILE 32
#define GRADIENT_TILE 64
#define BLOCK 8
#include "cd_binary_impl.h"
#undef REAL
#undef SUFFIX
#undef EXP
#undef UNIFORM
#undef TILE
#undef GRADIENT_TILE
#undef BLOCK

#define REAL double
#define SUFFIX _f64
#define EXP exp_f64
#define UNIFORM(bits) ((double)((bits) >> 11) * 0x1p-53)
#define TILE 16
#define GRADIENT_TILE 32
#define BLOCK 4
#include "cd_binary_impl.h"
