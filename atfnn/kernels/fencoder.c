/* Fused CPU kernels of the F-Encoder (atfnn/kernels/__init__.py loads them with ctypes; docs/performance.md).
 *
 * 1. Scalar self-attention: for each frame (N), head (H) and query i, m_i = sum_j p_ij x_j with
 *    p_ij = softmax_j(a_i x_j) over the F keys x_j; forward, and the backward from the saved row maximum and
 *    1 / (sum of exponentials), recomputing p instead of storing N*H*F*F weights.
 * 2. Add, dropout and LayerNorm over C channels: out = LN(h + drop(y)), with the mask from a counter-based hash,
 *    which the backward pass regenerates instead of storing.
 * 3. The convolution block conv2(relu(conv1(h))) along the bands, forward and backward (AVX-512 builds only).
 *
 * 1 and 2 are plain C99 that compilers vectorise, with AVX-512 intrinsics for 1 where the compiler targets it; one
 * call handles a contiguous range of rows, and the Python side splits the rows over threads (ctypes releases the
 * GIL).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
/* Flush denormals to zero: exp of very negative logits times x would otherwise hit the slow denormal path. */
#define FTZ_BEGIN unsigned int saved_csr = _mm_getcsr(); _mm_setcsr(saved_csr | 0x8040);
#define FTZ_END _mm_setcsr(saved_csr);
#else
#define FTZ_BEGIN
#define FTZ_END
#endif

#define MAX_KEYS 1024 /* bands per frame */
#define MAX_CHANNELS 64 /* channels per LayerNorm row */

/* exp(t) for t <= 0 (larger t is clamped to the representable range below): t = n ln2 + r, |r| <= ln2/2, exp(r)
 * by Cephes' degree-5 polynomial (about 1 ulp), 2^n by the exponent bits. Branch-free so that loops vectorise. */
static inline float exp_nonpositive(float t) {
    t = t < -87.0f ? -87.0f : t;
    float n = (t * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest via 1.5 * 2^23 */
    float r = t - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale = {.i = ((int32_t)n + 127) << 23};
    return p * scale.f;
}

/* Queries are processed LANES at a time, vectorised across queries, with the keys of the frame in an outer loop:
 * no horizontal sums inside the loops, and the per-query constants stay in registers. */
#define LANES 16

/* The largest and smallest key of a frame: with them the row maximum of a_i x_j is analytic. */
static inline __attribute__((always_inline)) void key_range(const float *xb, int64_t f, float *xmax, float *xmin) {
    float hi = xb[0], lo = xb[0];
    for (int64_t j = 1; j < f; j++) {
        hi = xb[j] > hi ? xb[j] : hi;
        lo = xb[j] < lo ? xb[j] : lo;
    }
    *xmax = hi, *xmin = lo;
}

static inline __attribute__((always_inline)) void attention_forward_impl(
    int64_t frame0, int64_t frames, int64_t heads, int64_t f, const float *a, const float *x, float *m,
    float *row_max, float *row_inv_sum) {
    int64_t nq = heads * f;
    for (int64_t b = frame0; b < frame0 + frames; b++) {
        const float *xb = x + b * f;
        float xmax, xmin;
        key_range(xb, f, &xmax, &xmin);
        for (int64_t q0 = 0; q0 < nq; q0 += LANES) {
            int64_t base = b * nq + q0, width = nq - q0 < LANES ? nq - q0 : LANES;
            float av[LANES], mx[LANES], s0[LANES], s1[LANES];
            for (int l = 0; l < LANES; l++) {
                av[l] = l < width ? a[base + l] : 0.0f;
                mx[l] = av[l] >= 0.0f ? av[l] * xmax : av[l] * xmin; /* the largest logit a_i x_j, without a pass */
                s0[l] = s1[l] = 0.0f;
            }
            for (int64_t j = 0; j < f; j++) {
                float xj = xb[j];
#pragma omp simd
                for (int l = 0; l < LANES; l++) {
                    float e = exp_nonpositive(av[l] * xj - mx[l]);
                    s0[l] += e;
                    s1[l] += e * xj;
                }
            }
            for (int l = 0; l < width; l++) {
                float inv = 1.0f / s0[l];
                m[base + l] = s1[l] * inv;
                row_max[base + l] = mx[l];
                row_inv_sum[base + l] = inv;
            }
        }
    }
}

#if defined(__AVX512F__) && !defined(ATFNN_PORTABLE)
/* The same two loops in AVX-512 intrinsics, one query vector per register: gcc's vectorisation of the portable loops
 * above keeps the 16 lanes in memory and builds 2^n with integer shifts, which left the attention about 3x slower
 * than this (docs/performance.md). Same arithmetic, with fused multiply-adds and vscalefps for the 2^n. */
#include <immintrin.h>
#define ATFNN_AVX512 1

/* exp(t) = 2^n 2^f with u = t log2(e), n = round(u), f = u - n in [-1/2, 1/2] (exact), 2^f by a degree-6
 * polynomial (near-minimax relative fit on [-1/2, 1/2]; at most 1.6 fp32 ulps, about Cephes' 1 above), 2^n by
 * vscalefps, which also takes t -> -inf to 0 without a clamp. The only error beyond the polynomial is u's rounding,
 * |t| * 6e-8 relative: nothing for the weights near the row maximum, which dominate every softmax sum. */
static inline __m512 exp_nonpositive16(__m512 t) {
    __m512 u = _mm512_mul_ps(t, _mm512_set1_ps(1.44269504088896341f));
    __m512 n = _mm512_roundscale_ps(u, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(u, n);
    __m512 p = _mm512_set1_ps(1.5337580100e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3399860395e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6185195216e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5503289974e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022646609e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314720560e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

static inline __mmask16 lanes_mask(int64_t width) {
    return width >= LANES ? (__mmask16)0xFFFF : (__mmask16)((1u << width) - 1u);
}

static void attention_forward_avx512(int64_t frame0, int64_t frames, int64_t heads, int64_t f, const float *a,
                                     const float *x, float *m, float *row_max, float *row_inv_sum) {
    int64_t nq = heads * f;
    for (int64_t b = frame0; b < frame0 + frames; b++) {
        const float *xb = x + b * f;
        float xmax, xmin;
        key_range(xb, f, &xmax, &xmin);
        for (int64_t q0 = 0; q0 < nq; q0 += LANES) {
            int64_t base = b * nq + q0;
            __mmask16 k = lanes_mask(nq - q0); /* lanes past the last query compute exp(0) and are not stored */
            __m512 av = _mm512_maskz_loadu_ps(k, a + base);
            __mmask16 up = _mm512_cmp_ps_mask(av, _mm512_setzero_ps(), _CMP_GE_OQ);
            __m512 mx = _mm512_mask_mov_ps(_mm512_mul_ps(av, _mm512_set1_ps(xmin)), up,
                                           _mm512_mul_ps(av, _mm512_set1_ps(xmax)));
            __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
            for (int64_t j = 0; j < f; j++) {
                __m512 xj = _mm512_set1_ps(xb[j]);
                __m512 e = exp_nonpositive16(_mm512_fmsub_ps(av, xj, mx));
                s0 = _mm512_add_ps(s0, e);
                s1 = _mm512_fmadd_ps(e, xj, s1);
            }
            __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.0f), s0);
            _mm512_mask_storeu_ps(m + base, k, _mm512_mul_ps(s1, inv));
            _mm512_mask_storeu_ps(row_max + base, k, mx);
            _mm512_mask_storeu_ps(row_inv_sum + base, k, inv);
        }
    }
}

static void attention_backward_avx512(int64_t frame0, int64_t frames, int64_t heads, int64_t f, const float *a,
                                      const float *x, const float *m, const float *row_max,
                                      const float *row_inv_sum, const float *grad_m, float *grad_a, float *grad_x) {
    int64_t nq = heads * f;
    __m512 acc_p[MAX_KEYS], acc_px[MAX_KEYS]; /* per key: this frame's queries' c0 p and c1 p, lane by lane */
    for (int64_t b = frame0; b < frame0 + frames; b++) {
        const float *xb = x + b * f;
        for (int64_t j = 0; j < f; j++) acc_p[j] = acc_px[j] = _mm512_setzero_ps();
        for (int64_t q0 = 0; q0 < nq; q0 += LANES) {
            int64_t base = b * nq + q0;
            __mmask16 k = lanes_mask(nq - q0); /* lanes past the last query get inv = g = 0: p = 0, they add nothing */
            __m512 gi = _mm512_maskz_loadu_ps(k, grad_m + base), av = _mm512_maskz_loadu_ps(k, a + base);
            __m512 mx = _mm512_maskz_loadu_ps(k, row_max + base), inv = _mm512_maskz_loadu_ps(k, row_inv_sum + base);
            __m512 mi = _mm512_maskz_loadu_ps(k, m + base);
            __m512 c0 = _mm512_mul_ps(gi, _mm512_fnmadd_ps(av, mi, _mm512_set1_ps(1.0f)));
            __m512 c1 = _mm512_mul_ps(gi, av), var = _mm512_setzero_ps();
            for (int64_t j = 0; j < f; j++) {
                __m512 xj = _mm512_set1_ps(xb[j]);
                __m512 p = _mm512_mul_ps(exp_nonpositive16(_mm512_fmsub_ps(av, xj, mx)), inv);
                __m512 d = _mm512_sub_ps(xj, mi);
                var = _mm512_fmadd_ps(_mm512_mul_ps(p, d), d, var);
                acc_p[j] = _mm512_fmadd_ps(c0, p, acc_p[j]);
                acc_px[j] = _mm512_fmadd_ps(c1, p, acc_px[j]);
            }
            _mm512_mask_storeu_ps(grad_a + base, k, _mm512_mul_ps(gi, var));
        }
        for (int64_t j = 0; j < f; j++)
            grad_x[b * f + j] = _mm512_reduce_add_ps(acc_p[j]) + xb[j] * _mm512_reduce_add_ps(acc_px[j]);
    }
}
#endif

#ifdef ATFNN_AVX512
/* 3. The F-Encoder's convolution block y = conv2(relu(conv1(h))) along the bands of each frame (Conv1d weights
 *    (out, in, k), odd k, zero padding k / 2), forward and backward; AVX-512 builds only (elsewhere oneDNN runs it).
 *    One frame at a time in transposed, zero-padded buffers ([channel][band], band g at pad + g), vectorised over
 *    16 bands: every tap is then a contiguous load times a broadcast weight, the ReLU output never leaves the frame
 *    (torch keeps it, 4x the input, for its backward), and the backward recomputes it from h. */
#define MAX_CONV_BLOCKS 32 /* 16-band blocks per frame: f <= 512 */
#define MAX_CONV_KERNEL 15
#define CONV_SUM_FRAMES 64 /* frames per fp32 partial sum of the weight gradients, before it joins the doubles */

typedef struct {
    int64_t f, c, hidden, k, pad, nb, width;
} conv_shape;

static conv_shape conv_shape_of(int64_t f, int64_t c, int64_t hidden, int64_t k) {
    conv_shape s = {f, c, hidden, k, k / 2, (f + LANES - 1) / LANES, 0};
    s.width = s.nb * LANES + 2 * s.pad; /* the widest tap of the last block reads up to here */
    return s;
}

/* src (f, ch) row-major -> dst[i][pad + g] (rows width apart); the pads stay as calloc left them (zero). */
static void transpose_in(const float *src, int64_t f, int64_t ch, int64_t pad, int64_t width, float *dst) {
    for (int64_t g = 0; g < f; g++)
        for (int64_t i = 0; i < ch; i++) dst[i * width + pad + g] = src[g * ch + i];
}

static void transpose_out(const float *src, int64_t f, int64_t ch, int64_t off, int64_t width, float *dst) {
    for (int64_t g = 0; g < f; g++)
        for (int64_t i = 0; i < ch; i++) dst[g * ch + i] = src[i * width + off + g];
}

/* out[o][off + g] = bias[o] + sum_{i, t} w[(o in_ch + i) k + t] in[i][g + t] for g < f and OB output channels from
 * o0 (relu: max(., 0)); stores are masked at f, so the pads of out stay zero. Always inlined with constant nb (5
 * for 80 bands) and OB: the OB x nb accumulators live in registers, each loaded input block serves OB of them, and
 * OB x nb independent chains keep both FMA ports busy (5 alone would wait on the FMA latency). */
static inline __attribute__((always_inline)) void conv_rows_block(
    int64_t o0, int64_t ob, const float *in, int64_t in_ch, int64_t k, int64_t f, int64_t nb, int64_t width,
    const float *w, const float *bias, int relu, float *out, int64_t off) {
    __m512 acc[4][MAX_CONV_BLOCKS];
    for (int64_t q = 0; q < ob; q++)
        for (int64_t b = 0; b < nb; b++) acc[q][b] = _mm512_set1_ps(bias ? bias[o0 + q] : 0.0f);
    for (int64_t i = 0; i < in_ch; i++) {
        for (int64_t t = 0; t < k; t++) {
            const float *src = in + i * width + t;
            for (int64_t b = 0; b < nb; b++) {
                __m512 x = _mm512_loadu_ps(src + b * LANES);
                for (int64_t q = 0; q < ob; q++)
                    acc[q][b] = _mm512_fmadd_ps(x, _mm512_set1_ps(w[((o0 + q) * in_ch + i) * k + t]), acc[q][b]);
            }
        }
    }
    for (int64_t q = 0; q < ob; q++)
        for (int64_t b = 0; b < nb; b++) {
            __m512 v = relu ? _mm512_max_ps(acc[q][b], _mm512_setzero_ps()) : acc[q][b];
            _mm512_mask_storeu_ps(out + (o0 + q) * width + off + b * LANES, lanes_mask(f - b * LANES), v);
        }
}

static inline __attribute__((always_inline)) void conv_rows(
    const float *in, int64_t in_ch, int64_t out_ch, int64_t k, int64_t f, int64_t nb, int64_t width,
    const float *w, const float *bias, int relu, float *out, int64_t off) {
    int64_t o = 0;
    if (nb <= 6) /* 4 x nb accumulators + the input block + 4 weights fit the 32 registers */
        for (; o + 4 <= out_ch; o += 4) conv_rows_block(o, 4, in, in_ch, k, f, nb, width, w, bias, relu, out, off);
    for (; o < out_ch; o++) conv_rows_block(o, 1, in, in_ch, k, f, nb, width, w, bias, relu, out, off);
}

/* acc[(ja b_ch + ib) k + t] += a[ja][pad + g] b[ib][g + t] over the frame's bands, lane by lane (a's pads are zero,
 * so lanes past f add nothing), for jb channels of a from ja0; bias_acc[ja] += a[ja][pad + g]. Each (unaligned) load
 * of b serves the jb channels, and the jb x k taps of one ib are independent chains in registers. */
static inline __attribute__((always_inline)) void weight_grad_block(
    int64_t ja0, int64_t jb, const float *a, const float *bm, int64_t b_ch, int64_t k, int64_t pad, int64_t nb,
    int64_t width, __m512 *acc, __m512 *bias_acc) {
    __m512 av[2][MAX_CONV_BLOCKS];
    for (int64_t q = 0; q < jb; q++)
        for (int64_t b = 0; b < nb; b++) {
            av[q][b] = _mm512_loadu_ps(a + (ja0 + q) * width + pad + b * LANES);
            bias_acc[ja0 + q] = _mm512_add_ps(bias_acc[ja0 + q], av[q][b]);
        }
    for (int64_t ib = 0; ib < b_ch; ib++) {
        const float *src = bm + ib * width;
        __m512 s[2][MAX_CONV_KERNEL];
        for (int64_t q = 0; q < jb; q++)
            for (int64_t t = 0; t < k; t++) s[q][t] = _mm512_setzero_ps();
        for (int64_t b = 0; b < nb; b++)
            for (int64_t t = 0; t < k; t++) {
                __m512 x = _mm512_loadu_ps(src + b * LANES + t);
                for (int64_t q = 0; q < jb; q++) s[q][t] = _mm512_fmadd_ps(av[q][b], x, s[q][t]);
            }
        for (int64_t q = 0; q < jb; q++) {
            __m512 *dst = acc + ((ja0 + q) * b_ch + ib) * k;
            for (int64_t t = 0; t < k; t++) dst[t] = _mm512_add_ps(dst[t], s[q][t]);
        }
    }
}

static inline __attribute__((always_inline)) void weight_grad_rows(
    const float *a, int64_t a_ch, const float *bm, int64_t b_ch, int64_t k, int64_t pad, int64_t nb, int64_t width,
    __m512 *acc, __m512 *bias_acc) {
    int64_t ja = 0;
    if (2 * nb + 2 * k < 32) /* the registers hold two channels' blocks and taps */
        for (; ja + 2 <= a_ch; ja += 2) weight_grad_block(ja, 2, a, bm, b_ch, k, pad, nb, width, acc, bias_acc);
    for (; ja < a_ch; ja++) weight_grad_block(ja, 1, a, bm, b_ch, k, pad, nb, width, acc, bias_acc);
}

static void flush_sums(__m512 *acc, int64_t n, double *out) {
    for (int64_t i = 0; i < n; i++) {
        out[i] += (double)_mm512_reduce_add_ps(acc[i]);
        acc[i] = _mm512_setzero_ps();
    }
}

static inline __attribute__((always_inline)) int conv_block_forward_impl(
    int64_t row0, int64_t rows, int64_t f, int64_t c, int64_t hidden, int64_t k, const float *h, const float *w1,
    const float *b1, const float *w2, const float *b2, float *y) {
    conv_shape s = conv_shape_of(f, c, hidden, k);
    float *hT = calloc((size_t)(c * s.width), sizeof(float)), *rT = calloc((size_t)(hidden * s.width), sizeof(float));
    float *yT = calloc((size_t)(c * s.width), sizeof(float));
    int ok = hT && rT && yT;
    for (int64_t r = row0; ok && r < row0 + rows; r++) {
        transpose_in(h + r * f * c, f, c, s.pad, s.width, hT);
        conv_rows(hT, c, hidden, k, f, s.nb, s.width, w1, b1, 1, rT, s.pad);
        conv_rows(rT, hidden, c, k, f, s.nb, s.width, w2, b2, 0, yT, 0);
        transpose_out(yT, f, c, 0, s.width, y + r * f * c);
    }
    free(hT), free(rT), free(yT);
    return ok ? 0 : -1;
}

/* Frames [row0, row0 + rows) of h (N, f, c) -> y (N, f, c). 0, or -1 when scratch memory is short. */
int atfnn_conv_block_forward(int64_t row0, int64_t rows, int64_t f, int64_t c, int64_t hidden, int64_t k,
                             const float *h, const float *w1, const float *b1, const float *w2, const float *b2,
                             float *y) {
    if (f == 80 && c == 8 && hidden == 32 && k == 5) /* the paper's sizes, as constants */
        return conv_block_forward_impl(row0, rows, 80, 8, 32, 5, h, w1, b1, w2, b2, y);
    return conv_block_forward_impl(row0, rows, f, c, hidden, k, h, w1, b1, w2, b2, y);
}

static inline __attribute__((always_inline)) int conv_block_backward_impl(
    int64_t row0, int64_t rows, int64_t f, int64_t c, int64_t hidden, int64_t k, const float *h, const float *w1,
    const float *b1, const float *w2, const float *grad_y, float *grad_h, double *gw1, double *gb1, double *gw2,
    double *gb2) {
    conv_shape s = conv_shape_of(f, c, hidden, k);
    int64_t n1 = hidden * c * k;
    float *hT = calloc((size_t)(c * s.width), sizeof(float)), *rT = calloc((size_t)(hidden * s.width), sizeof(float));
    float *gyT = calloc((size_t)(c * s.width), sizeof(float)), *guT = calloc((size_t)(hidden * s.width), sizeof(float));
    float *ghT = calloc((size_t)(c * s.width), sizeof(float));
    /* The transposed convolutions are convolutions with the weights flipped along the taps, in and out swapped. */
    float *w1f = malloc((size_t)n1 * sizeof(float)), *w2f = malloc((size_t)n1 * sizeof(float));
    __m512 *acc = _mm_malloc((size_t)(2 * n1 + c + hidden) * sizeof(__m512), 64);
    int ok = hT && rT && gyT && guT && ghT && w1f && w2f && acc;
    if (ok) {
        for (int64_t o = 0; o < hidden; o++)
            for (int64_t i = 0; i < c; i++)
                for (int64_t t = 0; t < k; t++) {
                    w1f[(i * hidden + o) * k + t] = w1[(o * c + i) * k + (k - 1 - t)];
                    w2f[(o * c + i) * k + t] = w2[(i * hidden + o) * k + (k - 1 - t)];
                }
        for (int64_t i = 0; i < 2 * n1 + c + hidden; i++) acc[i] = _mm512_setzero_ps();
    }
    __m512 *acc_w1 = acc, *acc_w2 = acc + n1, *acc_b1 = acc + 2 * n1, *acc_b2 = acc + 2 * n1 + hidden;
    for (int64_t r = row0; ok && r < row0 + rows; r++) {
        transpose_in(h + r * f * c, f, c, s.pad, s.width, hT);
        conv_rows(hT, c, hidden, k, f, s.nb, s.width, w1, b1, 1, rT, s.pad); /* relu(u), recomputed */
        transpose_in(grad_y + r * f * c, f, c, s.pad, s.width, gyT);
        /* grad of relu(u): conv2 transposed, then zero where u <= 0 (relu(u) = 0, as torch's threshold_backward) */
        conv_rows(gyT, c, hidden, k, f, s.nb, s.width, w2f, NULL, 0, guT, s.pad);
        for (int64_t o = 0; o < hidden; o++)
            for (int64_t b = 0; b < s.nb; b++) {
                float *gp = guT + o * s.width + s.pad + b * LANES;
                __mmask16 on = _mm512_cmp_ps_mask(_mm512_loadu_ps(rT + o * s.width + s.pad + b * LANES),
                                                  _mm512_setzero_ps(), _CMP_GT_OQ);
                _mm512_mask_storeu_ps(gp, lanes_mask(f - b * LANES), _mm512_maskz_mov_ps(on, _mm512_loadu_ps(gp)));
            }
        conv_rows(guT, hidden, c, k, f, s.nb, s.width, w1f, NULL, 0, ghT, 0);
        transpose_out(ghT, f, c, 0, s.width, grad_h + r * f * c);
        weight_grad_rows(gyT, c, rT, hidden, k, s.pad, s.nb, s.width, acc_w2, acc_b2);
        weight_grad_rows(guT, hidden, hT, c, k, s.pad, s.nb, s.width, acc_w1, acc_b1);
        if ((r - row0 + 1) % CONV_SUM_FRAMES == 0 || r == row0 + rows - 1) {
            flush_sums(acc_w1, n1, gw1), flush_sums(acc_w2, n1, gw2);
            flush_sums(acc_b1, hidden, gb1), flush_sums(acc_b2, c, gb2);
        }
    }
    free(hT), free(rT), free(gyT), free(guT), free(ghT), free(w1f), free(w2f);
    if (acc) _mm_free(acc);
    return ok ? 0 : -1;
}

/* The backward of atfnn_conv_block_forward for frames [row0, row0 + rows): grad_h (N, f, c) is written, the weight
 * and bias gradients (doubles, each thread its own) are accumulated into. 0, or -1 when scratch memory is short. */
int atfnn_conv_block_backward(int64_t row0, int64_t rows, int64_t f, int64_t c, int64_t hidden, int64_t k,
                              const float *h, const float *w1, const float *b1, const float *w2, const float *grad_y,
                              float *grad_h, double *gw1, double *gb1, double *gw2, double *gb2) {
    if (f == 80 && c == 8 && hidden == 32 && k == 5)
        return conv_block_backward_impl(row0, rows, 80, 8, 32, 5, h, w1, b1, w2, grad_y, grad_h, gw1, gb1, gw2, gb2);
    return conv_block_backward_impl(row0, rows, f, c, hidden, k, h, w1, b1, w2, grad_y, grad_h, gw1, gb1, gw2, gb2);
}
#endif

/* Which loops this build runs: kernels.status() reports it. */
const char *atfnn_build(void) {
#ifdef ATFNN_AVX512
    return "AVX-512";
#else
    return "portable C";
#endif
}

/* Frames [frame0, frame0 + frames) of a (N, heads, f) queries and x (N, f) keys = values -> m (N, heads, f),
 * and the row maxima and inverse sums that the backward needs. */
void atfnn_attention_forward(int64_t frame0, int64_t frames, int64_t heads, int64_t f, const float *a,
                             const float *x, float *m, float *row_max, float *row_inv_sum) {
    FTZ_BEGIN
#ifdef ATFNN_AVX512
    attention_forward_avx512(frame0, frames, heads, f, a, x, m, row_max, row_inv_sum);
#else
    if (f == 80) /* the paper's 80 bands: a constant trip count unrolls the inner loops */
        attention_forward_impl(frame0, frames, heads, 80, a, x, m, row_max, row_inv_sum);
    else
        attention_forward_impl(frame0, frames, heads, f, a, x, m, row_max, row_inv_sum);
#endif
    FTZ_END
}

static inline __attribute__((always_inline)) void attention_backward_impl(
    int64_t frame0, int64_t frames, int64_t heads, int64_t f, const float *a, const float *x, const float *m,
    const float *row_max, const float *row_inv_sum, const float *grad_m, float *grad_a, float *grad_x) {
    int64_t nq = heads * f;
    /* Per key and lane: sum over this lane's queries of c0 p and c1 p; summed over the lanes once per frame. */
    float acc_p[MAX_KEYS][LANES], acc_px[MAX_KEYS][LANES];
    for (int64_t b = frame0; b < frame0 + frames; b++) {
        const float *xb = x + b * f;
        for (int64_t j = 0; j < f; j++)
            for (int l = 0; l < LANES; l++) acc_p[j][l] = acc_px[j][l] = 0.0f;
        for (int64_t q0 = 0; q0 < nq; q0 += LANES) {
            int64_t base = b * nq + q0, width = nq - q0 < LANES ? nq - q0 : LANES;
            float av[LANES], mx[LANES], inv[LANES], mi[LANES], c0[LANES], c1[LANES], var[LANES];
            for (int l = 0; l < LANES; l++) {
                int in = l < width; /* lanes past the last query get g = 0, so they add nothing */
                float gi = in ? grad_m[base + l] : 0.0f;
                av[l] = in ? a[base + l] : 0.0f;
                mx[l] = in ? row_max[base + l] : 0.0f;
                inv[l] = in ? row_inv_sum[base + l] : 0.0f;
                mi[l] = in ? m[base + l] : 0.0f;
                /* dm_i/dx_k = p_ik (1 + a_i (x_k - m_i)) = p_ik c0 / g + p_ik x_k c1 / g */
                c0[l] = gi * (1.0f - av[l] * mi[l]);
                c1[l] = gi * av[l];
                var[l] = 0.0f;
            }
            for (int64_t j = 0; j < f; j++) {
                float xj = xb[j];
#pragma omp simd
                for (int l = 0; l < LANES; l++) {
                    float p = exp_nonpositive(av[l] * xj - mx[l]) * inv[l];
                    float d = xj - mi[l];
                    var[l] += p * d * d;
                    acc_p[j][l] += c0[l] * p;
                    acc_px[j][l] += c1[l] * p;
                }
            }
            for (int l = 0; l < width; l++) grad_a[base + l] = grad_m[base + l] * var[l]; /* dm_i/da_i = Var_p(x) */
        }
        for (int64_t j = 0; j < f; j++) {
            float sp = 0.0f, spx = 0.0f;
            for (int l = 0; l < LANES; l++) {
                sp += acc_p[j][l];
                spx += acc_px[j][l];
            }
            grad_x[b * f + j] = sp + xb[j] * spx;
        }
    }
}

void atfnn_attention_backward(int64_t frame0, int64_t frames, int64_t heads, int64_t f, const float *a,
                              const float *x, const float *m, const float *row_max, const float *row_inv_sum,
                              const float *grad_m, float *grad_a, float *grad_x) {
    FTZ_BEGIN
#ifdef ATFNN_AVX512
    attention_backward_avx512(frame0, frames, heads, f, a, x, m, row_max, row_inv_sum, grad_m, grad_a, grad_x);
#else
    if (f == 80)
        attention_backward_impl(frame0, frames, heads, 80, a, x, m, row_max, row_inv_sum, grad_m, grad_a, grad_x);
    else
        attention_backward_impl(frame0, frames, heads, f, a, x, m, row_max, row_inv_sum, grad_m, grad_a, grad_x);
#endif
    FTZ_END
}

/* 32 random bits for element k of a call: Wellons' lowbias32 hash of k under a seeded affine map. Counter-based:
 * the backward pass regenerates the mask instead of storing it, and the mask of an element does not depend on
 * how the rows are split over threads. k < 2^32 (atfnn/kernels checks the size). */
static inline uint32_t mask_bits(uint32_t seed_mul, uint32_t seed_add, uint32_t k) {
    uint32_t v = k * seed_mul + seed_add; /* seed_mul is odd: a bijection of k, another one for each call */
    v ^= v >> 16;
    v *= 0x7FEB352Du;
    v ^= v >> 15;
    v *= 0x846CA68Bu;
    v ^= v >> 16;
    return v;
}

/* LayerNorm rows are short (c = 8), so the loops run over ROWS rows at a time, vectorised across rows (strided
 * loads and stores) with the channel loops unrolled; one row at a time would leave all vector lanes but one idle in
 * the mean and the variance. */
#define ROWS 16
#define SUM_BLOCK 256
/* Channel loops must unroll completely (c is a constant in the c = 8 specialisations) for the row loop to vectorise. */
#define UNROLL _Pragma("GCC unroll 64")

static inline __attribute__((always_inline)) void add_norm_forward_row(
    int64_t r, int64_t c, const float *h, const float *y, uint32_t drop_below, float keep_scale, uint32_t seed_mul,
    uint32_t seed_add, const float *weight, const float *bias, float eps, float *out, float *xhat, float *rstd) {
    float s[MAX_CHANNELS];
    float mean = 0.0f;
    UNROLL
    for (int64_t k = 0; k < c; k++) {
        int64_t e = r * c + k;
        float keep = mask_bits(seed_mul, seed_add, (uint32_t)e) >= drop_below ? keep_scale : 0.0f;
        s[k] = h[e] + y[e] * keep;
        mean += s[k];
    }
    mean /= (float)c;
    float var = 0.0f;
    UNROLL
    for (int64_t k = 0; k < c; k++) var += (s[k] - mean) * (s[k] - mean);
    float rs = 1.0f / sqrtf(var / (float)c + eps);
    UNROLL
    for (int64_t k = 0; k < c; k++) {
        float xh = (s[k] - mean) * rs;
        xhat[r * c + k] = xh;
        out[r * c + k] = xh * weight[k] + bias[k];
    }
    rstd[r] = rs;
}

static inline __attribute__((always_inline)) void add_norm_forward_impl(
    int64_t row0, int64_t rows, int64_t c, const float *h, const float *y, uint32_t drop_below, float keep_scale,
    uint32_t seed_mul, uint32_t seed_add, const float *weight, const float *bias, float eps, float *out, float *xhat,
    float *rstd) {
    int64_t end = row0 + rows, full = row0 + rows / ROWS * ROWS;
    for (int64_t block = row0; block < full; block += ROWS) {
#pragma omp simd simdlen(ROWS)
        for (int64_t l = 0; l < ROWS; l++)
            add_norm_forward_row(block + l, c, h, y, drop_below, keep_scale, seed_mul, seed_add, weight, bias, eps,
                                 out, xhat, rstd);
    }
    for (int64_t r = full; r < end; r++)
        add_norm_forward_row(r, c, h, y, drop_below, keep_scale, seed_mul, seed_add, weight, bias, eps, out, xhat,
                             rstd);
}

/* Rows [row0, row0 + rows) of out = LayerNorm(h + dropout(y)) over c channels: an element of y is kept (and
 * scaled by keep_scale) when its mask bits are >= drop_below, so drop_below = 0 is no dropout. xhat and rstd are
 * what the backward needs. */
void atfnn_add_norm_forward(int64_t row0, int64_t rows, int64_t c, const float *h, const float *y,
                            uint32_t drop_below, float keep_scale, uint32_t seed_mul, uint32_t seed_add,
                            const float *weight, const float *bias, float eps, float *out, float *xhat, float *rstd) {
    /* drop_below = 0 keeps every element (the hash is cheaper than a second copy of the loops). */
    if (c == 8) /* the paper's c = 8 channels: constant trip counts unroll the channel loops */
        add_norm_forward_impl(row0, rows, 8, h, y, drop_below, keep_scale, seed_mul, seed_add, weight, bias, eps,
                              out, xhat, rstd);
    else
        add_norm_forward_impl(row0, rows, c, h, y, drop_below, keep_scale, seed_mul, seed_add, weight, bias, eps,
                              out, xhat, rstd);
}

static inline __attribute__((always_inline)) void add_norm_backward_row(
    int64_t r, int64_t c, const float *grad_out, const float *xhat, const float *rstd, uint32_t drop_below,
    float keep_scale, uint32_t seed_mul, uint32_t seed_add, const float *weight, float *grad_h, float *grad_y) {
    float g[MAX_CHANNELS];
    float mean_g = 0.0f, mean_gx = 0.0f;
    UNROLL
    for (int64_t k = 0; k < c; k++) {
        float go = grad_out[r * c + k], xh = xhat[r * c + k];
        g[k] = go * weight[k];
        mean_g += g[k];
        mean_gx += g[k] * xh;
    }
    mean_g /= (float)c;
    mean_gx /= (float)c;
    UNROLL
    for (int64_t k = 0; k < c; k++) {
        int64_t e = r * c + k;
        float gs = rstd[r] * (g[k] - mean_g - xhat[e] * mean_gx);
        float keep = mask_bits(seed_mul, seed_add, (uint32_t)e) >= drop_below ? keep_scale : 0.0f;
        grad_h[e] = gs;
        grad_y[e] = gs * keep;
    }
}

static inline __attribute__((always_inline)) void add_norm_backward_impl(
    int64_t row0, int64_t rows, int64_t c, const float *grad_out, const float *xhat, const float *rstd,
    uint32_t drop_below, float keep_scale, uint32_t seed_mul, uint32_t seed_add, const float *weight, float *grad_h,
    float *grad_y, double *grad_weight, double *grad_bias) {
    /* One row at a time (the channel loops vectorise): across rows, as in the forward, measured no faster here. */
    int64_t end = row0 + rows;
    for (int64_t r = row0; r < end; r++)
        add_norm_backward_row(r, c, grad_out, xhat, rstd, drop_below, keep_scale, seed_mul, seed_add, weight, grad_h,
                              grad_y);
    /* The weight and bias gradients: float partial sums over blocks of SUM_BLOCK contiguous rows (vectorised across
     * the c channels), each block's added into the doubles, so that a million rows do not pile up fp32 rounding. */
    for (int64_t block = row0; block < end; block += SUM_BLOCK) {
        int64_t stop = block + SUM_BLOCK < end ? block + SUM_BLOCK : end;
        float gw[MAX_CHANNELS] = {0}, gb[MAX_CHANNELS] = {0};
        for (int64_t r = block; r < stop; r++) {
            UNROLL
            for (int64_t k = 0; k < c; k++) {
                gw[k] += grad_out[r * c + k] * xhat[r * c + k];
                gb[k] += grad_out[r * c + k];
            }
        }
        for (int64_t k = 0; k < c; k++) {
            grad_weight[k] += gw[k];
            grad_bias[k] += gb[k];
        }
    }
}

/* The backward of atfnn_add_norm_forward for rows [row0, row0 + rows); grad_weight and grad_bias (c doubles each)
 * are accumulated into, so each thread passes its own. */
void atfnn_add_norm_backward(int64_t row0, int64_t rows, int64_t c, const float *grad_out, const float *xhat,
                             const float *rstd, uint32_t drop_below, float keep_scale, uint32_t seed_mul,
                             uint32_t seed_add, const float *weight, float *grad_h, float *grad_y,
                             double *grad_weight, double *grad_bias) {
    if (c == 8)
        add_norm_backward_impl(row0, rows, 8, grad_out, xhat, rstd, drop_below, keep_scale, seed_mul, seed_add,
                               weight, grad_h, grad_y, grad_weight, grad_bias);
    else
        add_norm_backward_impl(row0, rows, c, grad_out, xhat, rstd, drop_below, keep_scale, seed_mul, seed_add,
                               weight, grad_h, grad_y, grad_weight, grad_bias);
}
